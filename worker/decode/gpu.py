"""The GPU decoder: batches of plain JPEGs decoded on the device with NVIDIA nvImageCodec, the rest by Pillow.

One background thread gathers what was submitted (whole takes, ``submit_many``, up to ``max_batch`` images),
reads each header (``worker.decode.header``: a JPEG marker scan, Pillow for odd cases; the limits, the EXIF
orientation, the route),
decodes the GPU's share in calls of up to ``max_batch``, then orients, resizes and crops each image on the
device to the model's input (uint8 ``H x W x 3``, the semantics of ``worker.decode.cpu``,
``worker.decode.tensorprep``), and hands each call's results back in one list per submitter. Anything the GPU
must not or could not decode (nvImageCodec returns None for it) goes to the CPU fallback, one by
one: a bad image never fails its batch. nvImageCodec is imported only when such a decoder is built.

nvJPEG's hardware batched path can write its outputs before work queued earlier on its stream has
run (pytorch/vision#9606), so by default the decode stream is drained before each batch and
synchronised after it, before any tensor is handed on (``sync=False`` measures without).
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from ..errors import JobError
from . import Decoded, Decoder, DecodeResult
from .cpu import ImageError, Limits, Preprocess
from .header import Header, read_header
from .nvcodec import GpuDecodeUnavailable, NvImageCodec, load_nvimgcodec
from .pool import ThreadDecoder
from .tensorprep import prepare

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 128
BATCH_PIXELS = 256_000_000  # source pixels per decode call (~770 MB of RGB on the device): more waits a call
Done = Callable[[DecodeResult], None]


@dataclass
class Entry:
    """One image routed to the device: its bytes, who submitted it (and at which index), its header."""

    data: bytes
    done: Decoded
    index: int
    header: Header


class Handoff:
    """Results gathered per submitter, sent as one list each: a decode call's images go on together."""

    def __init__(self) -> None:
        self.lists: dict[int, tuple[Decoded, list[tuple[int, DecodeResult]]]] = {}

    def add(self, done: Decoded, index: int, result: DecodeResult) -> None:
        self.lists.setdefault(id(done), (done, []))[1].append((index, result))

    def send(self) -> None:
        for done, results in self.lists.values():
            done(results)
        self.lists.clear()


class BatchDecode(Protocol):
    """Encoded JPEGs to uint8 ``H x W x 3`` tensors on the device (None where one failed), on ``stream``."""

    def __call__(self, images: Sequence[bytes], stream: int) -> list[torch.Tensor | None]: ...


__all__ = ["BatchDecode", "GpuDecodeUnavailable", "GpuDecoder", "NvImageCodec", "build_gpu_decoder", "probe"]


class GpuDecoder:
    """``Decoder`` that batches JPEGs onto ``batch_decode`` and sends the rest to ``fallback`` (Pillow)."""

    backend = "gpu"  # what decodes the pixels (the result cache's key names it: ``producer.wire.cache``)

    def __init__(
        self,
        spec: Preprocess,
        limits: Limits,
        fallback: Decoder,
        batch_decode: BatchDecode,
        device: torch.device | str,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        sync: bool = True,
    ) -> None:
        self.spec, self.limits, self.fallback, self.batch_decode = spec, limits, fallback, batch_decode
        self.device, self.max_batch, self.sync = torch.device(device), max(1, max_batch), sync
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.routes: Counter[str] = Counter()  # "gpu", "gpu failed", "cpu: <reason>", "refused"
        self.tasks: queue.Queue[tuple[list[bytes], Decoded] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="gpu-decode", daemon=True)
        self.thread.start()

    def submit(self, data: bytes, done: Done) -> None:
        """Queue one image for the next batch."""
        self.tasks.put(([data], lambda results: done(results[0][1])))

    def submit_many(self, images: Sequence[bytes], done: Decoded) -> None:
        """Queue a take's images as one task: they are routed and decoded together, and come back by call."""
        if images:
            self.tasks.put((list(images), done))

    def close(self) -> None:
        """Decode everything submitted, wait for the fallback, then stop."""
        self.tasks.put(None)
        self.thread.join()
        self.fallback.close()
        log.info("gpu decoder routes: %s", dict(self.routes))

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self.tasks.get()
            if first is None:
                return
            tasks, count = [first], len(first[0])
            while count < self.max_batch:  # whole tasks: a take's images are never split between two loops
                try:
                    task = self.tasks.get_nowait()
                except queue.Empty:
                    break
                if task is None:
                    stopping = True
                    break
                tasks.append(task)
                count += len(task[0])
            try:
                self._run(tasks)
            except Exception:  # a consumer's callback failed: the thread must live on for everything queued after
                log.exception("gpu decode: %d image(s) failed in their callbacks", count)

    def _run(self, tasks: list[tuple[list[bytes], Decoded]]) -> None:
        """Route each image, decode the GPU's share in calls of up to ``max_batch``, hand results on by call."""
        start = time.monotonic()
        gpu: list[Entry] = []
        refused = Handoff()
        for images, done in tasks:
            for i, data in enumerate(images):
                try:
                    header = read_header(data, self.limits)
                except ImageError as exc:
                    self.routes["refused"] += 1
                    error = JobError(exc.kind, str(exc))
                    refused.add(done, i, DecodeResult(None, error, start, (time.monotonic() - start) * 1000))
                    continue
                if header.cpu_reason:
                    self.routes[f"cpu: {header.cpu_reason}"] += 1
                    self.fallback.submit(data, lambda result, done=done, i=i: done([(i, result)]))
                else:
                    gpu.append(Entry(data, done, i, header))
        refused.send()
        part: list[Entry] = []
        held = 0  # the part's source pixels
        for entry in gpu:  # one decode call per BATCH_PIXELS of source pixels, at most max_batch images
            pixels = entry.header.width * entry.header.height
            if part and (len(part) >= self.max_batch or held + pixels > BATCH_PIXELS):
                self._decode(part, start)
                part, held = [], 0
            part.append(entry)
            held += pixels
        if part:
            self._decode(part, start)

    def _decode(self, gpu: list[Entry], start: float) -> None:
        outputs: list[torch.Tensor | None]
        try:
            with self._on_stream():
                decoded = self.batch_decode([e.data for e in gpu], self._stream_handle())
                ok = [i for i, image in enumerate(decoded) if image is not None]
                prepared = prepare([decoded[i] for i in ok], [gpu[i].header for i in ok], self.spec)
                outputs = [None] * len(gpu)
                for i, image in zip(ok, prepared, strict=True):
                    outputs[i] = image
                self._finish()
        except (RuntimeError, ValueError, TypeError) as exc:  # the whole batch failed on the device: Pillow takes it
            log.warning("gpu decode failed for a batch of %d (%s): decoding it on the CPU", len(gpu), exc)
            outputs = [None] * len(gpu)
        ms = (time.monotonic() - start) * 1000
        handoff = Handoff()
        for entry, image in zip(gpu, outputs, strict=True):
            if image is None:
                self.routes["gpu failed"] += 1
                self.fallback.submit(entry.data, lambda result, e=entry: e.done([(e.index, result)]))
            else:
                self.routes["gpu"] += 1
                handoff.add(entry.done, entry.index, DecodeResult(image, None, start, ms))
        handoff.send()  # one hand-off per submitter for the whole call

    def _on_stream(self) -> AbstractContextManager[Any]:
        if self.stream is None:
            return nullcontext()
        if self.sync:
            self.stream.synchronize()  # drained: the decoder writes into memory nothing queued still reads
        return torch.cuda.stream(self.stream)

    def _stream_handle(self) -> int:
        return self.stream.cuda_stream if self.stream is not None else 0

    def _finish(self) -> None:
        """Make the batch's tensors safe to hand to another thread (and stream)."""
        if self.stream is None:
            return
        if self.sync:
            self.stream.synchronize()
        else:  # ordered only: work queued later on the consumer's (default) stream waits for this batch
            torch.cuda.default_stream(self.device).wait_stream(self.stream)


def build_gpu_decoder(
    spec: Preprocess,
    limits: Limits,
    fallback: Decoder,
    device: torch.device | str,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    sync: bool = True,
    options: str = "",
    hw_load: float = 1.0,
) -> GpuDecoder:
    """A ``GpuDecoder`` on nvImageCodec, checked on a small JPEG first; raise ``GpuDecodeUnavailable``."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise GpuDecodeUnavailable(
            f"GPU decoding needs a CUDA device, not {dev}"
            if dev.type != "cuda"
            else "GPU decoding needs a CUDA device, and torch sees none"
        )
    codec = NvImageCodec(dev, options, hw_load)
    stream, buf = torch.cuda.Stream(dev), io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG", quality=90)
    with torch.cuda.stream(stream):
        check = codec([buf.getvalue()], stream.cuda_stream)
    stream.synchronize()
    if check[0] is None:
        raise GpuDecodeUnavailable(
            "nvImageCodec could not decode a JPEG on the GPU (is libnvjpeg for CUDA 13 "
            "there? pip install nvidia-nvjpeg)"
        )
    return GpuDecoder(spec, limits, fallback, codec, dev, max_batch=max_batch, sync=sync)


def probe(device: str = "cuda") -> str:
    """One line: whether the GPU decoder starts on ``device`` (nvImageCodec's version), or why not."""
    spec = Preprocess(size=(8, 8))
    fallback = ThreadDecoder(spec, Limits(), 1)
    try:
        build_gpu_decoder(spec, Limits(), fallback, device).close()
    except GpuDecodeUnavailable as exc:
        fallback.close()
        return f"gpu decoder unavailable on {device}: {exc}"
    return f"gpu decoder ready on {device}: nvImageCodec {load_nvimgcodec().__version__}"
