"""Derive the simulated decode call's cost (``bench.simdevice``) from the H200 rows and this machine's host work.

``python -m bench.simcalib [--images 4000] [--repeats 3]``

The H200's decoder-alone row (``bench:gpu-decode-cuda``: 4,780 img/s on the photos, stream synchronised,
4,000 images submitted at once, so calls of 128) is host work + device work, in one thread. The host
part is what the simulation runs for real (Pillow header read per image, routing, ``prepare``'s tensor
calls, callbacks): measured here by the same ``GpuDecoder`` with a decode call that costs nothing. What is
left is the device's: per call of 128, ``128 / 4780 s - 128 h``. The latency row at 25% load
(``bench:latency-gpudecode-cuda``: decode p50 3.48 ms, calls of about 2 images) gives a small call:
``3.48 ms - 2 h``. A line through both is ``fixed + n * per_image``. The host work per core of the H200's
Xeon and of this box compare through one row measured on both: Pillow decode capacity per process, 225
img/s there (3,601 on 16 processes), 222 here (``bench:decode-capacity-cpu``, 1 process).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

from .simdevice import unique_photos
from .simrun import SIM_SIZE, SimDecode, Trace

H200_DECODER_ALONE = 4780.3  # img/s, photos, sync on, calls of 128 (bench:gpu-decode-cuda)
H200_SMALL_CALL_MS = 3.48  # decode p50 at 25% load (bench:latency-gpudecode-cuda)
SMALL_CALL_IMAGES = 2  # ~560 jobs/s arriving while a ~3.5 ms call runs
BIG_CALL_IMAGES = 128  # worker.decode.gpu.DEFAULT_MAX_BATCH


class Countdown:
    """Set once ``done`` was called ``count`` times (from any thread)."""

    def __init__(self, count: int) -> None:
        self.left, self.lock, self.event = count, threading.Lock(), threading.Event()

    def done(self, _: object) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.event.set()


def host_us_per_image(payloads: list[bytes]) -> float:
    """Wall µs per image of the real ``GpuDecoder`` with a free device: everything submitted at once."""
    from worker.decode.cpu import Limits, Preprocess
    from worker.decode.gpu import GpuDecoder
    from worker.decode.pool import ThreadDecoder

    spec, limits = Preprocess(size=SIM_SIZE), Limits()
    decoder = GpuDecoder(spec, limits, ThreadDecoder(spec, limits, 1), SimDecode(Trace(0), 0.0, 0.0), "cpu")
    try:
        countdown = Countdown(len(payloads))
        start = time.perf_counter()
        for data in payloads:
            decoder.submit(data, countdown.done)
        if not countdown.event.wait(600):
            raise TimeoutError(f"{countdown.left} images not decoded")
        return (time.perf_counter() - start) / len(payloads) * 1e6
    finally:
        decoder.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as bench/simrun.py: tiny tensor calls, no OpenMP team spinning
    payloads = unique_photos(args.images)
    host_us_per_image(payloads[:500])  # warm: imports, Pillow's plugins
    runs = [host_us_per_image(payloads) for _ in range(args.repeats)]
    h_ms = statistics.median(runs) / 1000
    big = BIG_CALL_IMAGES / H200_DECODER_ALONE * 1000 - BIG_CALL_IMAGES * h_ms
    small = H200_SMALL_CALL_MS - SMALL_CALL_IMAGES * h_ms
    per_image = (big - small) / (BIG_CALL_IMAGES - SMALL_CALL_IMAGES)
    fixed = small - SMALL_CALL_IMAGES * per_image
    each = ", ".join(f"{r:.1f}" for r in runs)
    print(f"host work per image (GpuDecoder, free device): {h_ms * 1000:.1f} µs (runs: {each})")
    print(f"device per call of {BIG_CALL_IMAGES}: {big:.2f} ms; of {SMALL_CALL_IMAGES}: {small:.2f} ms")
    print(f"=> --decode-fixed-ms {fixed:.2f} --decode-per-image-ms {per_image:.3f}")


if __name__ == "__main__":
    main()
