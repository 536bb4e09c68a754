"""One simulated-device run (the child of ``bench.simdevice``): the real worker wiring, a device of GIL-free waits.

Run as a script, ``python bench/simrun.py --url URL --jobs N ...``, with ``PYTHONPATH`` naming the source tree
under test (this checkout, or another commit's worktree): everything it imports besides the standard library
and torch is that tree's ``worker`` and ``producer``, so one file measures both sides of a before/after.

What is real: settings (``worker.config``), the Redis store and its registration (``worker.service``), the
take, the GPU decoder's thread with its Pillow header read per image (``worker.decode.gpu.GpuDecoder``), the
batcher, the infer stage (``worker.infer.Predictor`` on a ``worker.model.Classifier``), the finish, the
heartbeat and reaper. What is simulated: nvImageCodec's batch decode (``SimDecode``: sleeps ``fixed + n x
per_image`` ms) and the model's forward pass (``SimModule``: sleeps the calibrated ms of its padded batch),
both releasing the GIL as the device waits do. Pixels are tiny (``SIM_SIZE``) so that the host-side tensor
calls stay as cheap as CUDA launches; the calibration lives in ``bench.simdevice``.

Prints one JSON object: the rate after the first finished batch, decode-call and forward-batch histograms,
CPU seconds per thread (``/proc/self/task/*/schedstat``) over the same window.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import re
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

SIM_SIZE = (7, 7)  # model input: 224 / 32, so host tensor calls cost about what their CUDA launches would
SCALE_DOWN = 16  # a "decoded" image is its JPEG's size / 16 (keeps prepare()'s grouping by size)
SOF_MARKERS = (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2")


def wait_until(deadline: float) -> None:
    """Sleep (the GIL released) until ``time.perf_counter()`` reaches ``deadline``."""
    left = deadline - time.perf_counter()
    if left > 0:
        time.sleep(left)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(height, width)`` from the first SOF marker (what nvImageCodec's ``CodeStream`` parses); (512, 512) if none."""
    for marker in SOF_MARKERS:
        at = data.find(marker)
        if at >= 0 and len(data) >= at + 9:
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return height, width
    return 512, 512


class Trace:
    """What the simulated device saw, and the window the rate and CPU are measured over."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.decode_calls: Counter[int] = Counter()
        self.forward_padded: Counter[int] = Counter()
        self.batch_jobs: Counter[int] = Counter()  # jobs by the size of the forward batch they ran in
        self.finished = self.ok = 0
        self.first: tuple[float, int, dict[str, float]] | None = None
        self.last: tuple[float, int, dict[str, float]] | None = None
        self.lock = threading.Lock()

    def finished_jobs(self, results: Sequence[dict[str, Any]]) -> None:
        """Called after each store finish (results recorded and published)."""
        with self.lock:
            self.finished += len(results)
            self.ok += sum(1 for r in results if r.get("ok"))
            for result in results:
                self.batch_jobs[int(result.get("batch") or 0)] += 1
            if self.first is None:
                self.first = (time.perf_counter(), self.finished, thread_cpu())
            elif self.finished >= self.expected and self.last is None:
                self.last = (time.perf_counter(), self.finished, thread_cpu())


class SimDecode:
    """``worker.decode.gpu.BatchDecode``: one decode call waits ``fixed_ms + n * per_image_ms``, GIL-free."""

    def __init__(self, trace: Trace, fixed_ms: float, per_image_ms: float) -> None:
        self.trace, self.fixed_s, self.per_image_s = trace, fixed_ms / 1000, per_image_ms / 1000

    def __call__(self, images: Sequence[bytes], stream: int) -> list[torch.Tensor | None]:
        start = time.perf_counter()
        self.trace.decode_calls[len(images)] += 1
        out: list[torch.Tensor | None] = []
        for data in images:
            height, width = jpeg_size(data)
            shape = (max(8, height // SCALE_DOWN), max(8, width // SCALE_DOWN), 3)
            out.append(torch.zeros(shape, dtype=torch.uint8))
        wait_until(start + self.fixed_s + self.per_image_s * len(images))
        return out


class SimModule(torch.nn.Module):
    """The model's forward pass: waits the calibrated ms of its (padded) batch size, returns zero logits."""

    def __init__(self, trace: Trace, forward_ms: dict[int, float], classes: int) -> None:
        super().__init__()
        self.trace, self.classes = trace, classes
        self.sizes = sorted(forward_ms)
        self.ms = [forward_ms[s] for s in self.sizes]

    def cost_s(self, n: int) -> float:
        """Seconds for a batch of ``n``: the table's row, linear between rows, proportional past the last."""
        i = bisect.bisect_left(self.sizes, n)
        if i < len(self.sizes) and self.sizes[i] == n:
            return self.ms[i] / 1000
        if i == 0:
            return self.ms[0] / 1000
        if i == len(self.sizes):
            return self.ms[-1] * n / self.sizes[-1] / 1000
        lo, hi = self.sizes[i - 1], self.sizes[i]
        return (self.ms[i - 1] + (self.ms[i] - self.ms[i - 1]) * (n - lo) / (hi - lo)) / 1000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start, n = time.perf_counter(), x.shape[0]
        self.trace.forward_padded[n] += 1
        wait_until(start + self.cost_s(n))
        return torch.zeros((n, self.classes))


class TimedStore:
    """The real store, with every finish reported to the trace once Redis has it (the point results are out)."""

    def __init__(self, inner: Any, trace: Trace) -> None:
        self.inner, self.trace = inner, trace

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def finish(self, outcomes: list[Any]) -> list[str]:
        skipped = self.inner.finish(outcomes)
        self.trace.finished_jobs([o.result for o in outcomes])
        return skipped


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each thread of this process, by Python thread name (numbered pools merged)."""
    names = {t.native_id: re.sub(r"[_-]\d+$", "", t.name) for t in threading.enumerate()}
    out: Counter[str] = Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            ns = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out[names.get(int(tid), "non-Python threads")] += ns / 1e9
    return dict(out)


def labels() -> tuple[str, ...]:
    """ImageNet's labels from the tree under test, else numbered ones."""
    import worker

    path = Path(worker.__file__).parent / "imagenet_classes.txt"
    if path.exists():
        return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    return tuple(f"class {i}" for i in range(1000))


def build(args: argparse.Namespace, trace: Trace) -> tuple[Any, Any, Any, Any]:
    """Settings, store, decoder and predictor: the tree's own classes, the device replaced."""
    from worker import config, service
    from worker.decode.cpu import Limits, Preprocess
    from worker.decode.gpu import GpuDecoder
    from worker.decode.pool import ThreadDecoder
    from worker.infer import Predictor
    from worker.model import Classifier, ModelInfo, bucket_sizes

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    flags = ["--model", "sim.pt", "--redis-url", args.url, "--batch-size", str(args.batch), "--device", "cpu"]
    flags += ["--decode", "cpu", "--max-wait-ms", str(args.max_wait_ms), "--burst", *args.worker_args.split()]
    settings = config.settings_from(parser.parse_args(flags), environ={})
    spec = Preprocess(size=SIM_SIZE, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    names = labels()
    info = ModelInfo("efficientnet-lite0", "sim", names, spec)
    forward_ms = {int(k): float(v) for k, v in json.loads(args.forward_ms).items()}
    module = SimModule(trace, forward_ms, len(names))
    model = Classifier(module=module, info=info, device=torch.device("cpu"), buckets=bucket_sizes(args.batch))
    limits = Limits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_pixels)
    fallback = ThreadDecoder(spec, limits, 1)
    device = SimDecode(trace, args.decode_fixed_ms, args.decode_per_image_ms)
    decoder = GpuDecoder(spec, limits, fallback, device, "cpu", sync=True)
    cache = {"tag": info.tag, "precision": settings.precision, "decode": "gpu", "topk": settings.topk}
    store = TimedStore(service.build_store(settings, {**cache, "ttl_s": settings.cache_ttl_s}), trace)
    predictor = Predictor(model, int(settings.batch_size), settings.topk)
    return settings, store, decoder, predictor


def serve(settings: Any, store: Any, decoder: Any, predictor: Any) -> int:
    """Run the pipeline until the queue is empty: ``worker.service.serve`` where the tree has it, else (3042faf)
    the same wiring its ``run()`` did inline (pipeline, heartbeat), without the model load."""
    from worker import service
    from worker.health import Health

    stop = threading.Event()
    health = Health(redis_ttl_s=settings.worker_ttl_s)
    health.warmed = True
    if not service.register(store, stop):
        raise SystemExit("simrun: could not register with Redis")
    if hasattr(service, "serve"):
        return service.serve(
            settings, stop, store=store, decoder=decoder, predictor=predictor, health=health, metrics=None
        )
    return legacy_serve(settings, stop, store, decoder, predictor, health)


def legacy_serve(settings: Any, stop: threading.Event, store: Any, decoder: Any, predictor: Any, health: Any) -> int:
    """The tail of 3042faf's ``worker.service.run``: pipeline and heartbeat (its watchdog left out: it only waits)."""
    from worker.heartbeat import Heartbeat
    from worker.pipeline import Pipeline
    from worker.progress import InHand, PipelineSettings, Stats

    hand, stats = InHand(), Stats()
    pipeline_settings = PipelineSettings(settings.worker_name, settings.max_wait_ms, settings.idle_wait_ms, burst=True)
    pipeline = Pipeline(store, decoder, predictor, pipeline_settings, stop, hand=hand, stats=stats, health=health)
    heartbeat = Heartbeat(store, hand, stats, settings.worker_ttl_s, reap_s=min(5.0, settings.worker_ttl_s / 2))
    heartbeat.start()
    try:
        return pipeline.run()
    finally:
        heartbeat.stop()
        store.unregister()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One drain of the pre-queued jobs; the numbers ``bench.simdevice`` aggregates."""
    torch.set_num_threads(1)
    trace = Trace(args.jobs)
    settings, store, decoder, predictor = build(args, trace)
    started = time.perf_counter()
    processed = serve(settings, store, decoder, predictor)
    wall_s = time.perf_counter() - started
    first, last = trace.first, trace.last
    if first is None or last is None or last[1] <= first[1]:
        raise SystemExit(f"simrun: finished {trace.finished} of {args.jobs} jobs: no window to measure")
    images, span_s = last[1] - first[1], last[0] - first[0]
    cpu = {k: (last[2].get(k, 0.0) - first[2].get(k, 0.0)) * 1e6 / images for k in last[2]}
    forward = {size: jobs // size for size, jobs in trace.batch_jobs.items() if size}
    return {
        "images_per_s": images / span_s,
        "jobs": processed,
        "ok": trace.ok,
        "wall_s": wall_s,
        "decode_calls": dict(trace.decode_calls),
        "forward_batches": forward,
        "forward_padded": dict(trace.forward_padded),
        "cpu_us_per_image": cpu,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--jobs", type=int, required=True, help="jobs queued: the run ends when all are finished")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--forward-ms", required=True, help='JSON {"batch": ms}')
    parser.add_argument("--decode-fixed-ms", type=float, required=True)
    parser.add_argument("--decode-per-image-ms", type=float, required=True)
    parser.add_argument("--worker-args", default="", help="more worker flags, e.g. '--cache-ttl-s 0'")
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args.out.write_text(json.dumps(measure(args)))


if __name__ == "__main__":
    main()
