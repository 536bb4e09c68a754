"""The GPU decoder: batches of plain JPEGs decoded on the device with NVIDIA nvImageCodec, the rest by Pillow.

One background thread gathers what was submitted (up to ``max_batch``), reads each header with
Pillow (``worker.decode.header``: the limits, the EXIF orientation, the route), decodes the GPU's
share in one ``Decoder.decode`` call, then orients, resizes and crops each image on the device to
the model's input (uint8 ``H x W x 3``, the semantics of ``worker.decode.cpu``). Anything the GPU
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
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import JobError
from . import Decoder, DecodeResult
from .cpu import ImageError, Limits, Preprocess, draft_scale, resize_plan
from .header import Header, read_header
from .pool import ThreadDecoder

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 128
BATCH_PIXELS = 256_000_000  # source pixels per decode call (~770 MB of RGB on the device): more waits a call
RESIZE_PIXELS = 32_000_000  # same-size images resized together up to this many pixels (~380 MB as float)
Done = Callable[[DecodeResult], None]


class GpuDecodeUnavailable(RuntimeError):
    """nvImageCodec is missing, or cannot decode a JPEG on this device."""


class BatchDecode(Protocol):
    """Encoded JPEGs to uint8 ``H x W x 3`` tensors on the device (None where one failed), on ``stream``."""

    def __call__(self, images: Sequence[bytes], stream: int) -> list[torch.Tensor | None]: ...


def orient(images: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to ``... x H x W x C`` images, as Pillow's ``ImageOps.exif_transpose``."""
    if orientation in (5, 6, 7, 8):  # the four that swap width and height
        images = images.transpose(-3, -2)
    flips = {2: (-2,), 3: (-3, -2), 4: (-3,), 6: (-2,), 7: (-3, -2), 8: (-3,)}.get(orientation)
    return images.flip(flips) if flips else images


def reduce(images: torch.Tensor, scale: int) -> torch.Tensor:
    """``N x h x w x 3`` uint8 images at 1/``scale`` (ceil), each output pixel the mean of its ``scale`` x ``scale``
    block: what Pillow's ``draft`` (DCT scaling in libjpeg) gives the CPU path for large JPEGs, closely."""
    if scale == 1:
        return images
    x = F.avg_pool2d(images.permute(0, 3, 1, 2).float(), scale, ceil_mode=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def resize_batch(images: torch.Tensor, spec: Preprocess) -> torch.Tensor:
    """Same-size uint8 ``N x h x w x 3`` images to ``N x H x W x 3`` (``spec``'s plan; bilinear, antialiased
    like Pillow's reducing resize, rounded and clamped to uint8)."""
    _, h, w, _ = images.shape
    height, width = spec.size
    new_w, new_h, left, top = resize_plan(w, h, spec)
    x = images.permute(0, 3, 1, 2).float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    x = x[:, :, top : top + height, left : left + width]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def prepare(images: Sequence[torch.Tensor], headers: Sequence[Header], spec: Preprocess) -> list[torch.Tensor]:
    """Decoded full-size ``h x w x 3`` images to the model's input, as ``worker.decode.cpu.decode`` would: the
    draft scale (unrotated JPEGs), the EXIF orientation, the resize plan. Images alike are done together."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (image, header) in enumerate(zip(images, headers, strict=True)):
        scale = draft_scale(header.width, header.height, spec) if header.orientation == 1 else 1
        groups.setdefault((*image.shape, scale, header.orientation), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(images)
    for (h, w, _, scale, turn), same in groups.items():
        chunk = max(1, RESIZE_PIXELS // (h * w))
        for k in range(0, len(same), chunk):
            indices = same[k : k + chunk]
            batch = orient(reduce(torch.stack([images[i] for i in indices]), scale), turn)
            for i, image in zip(indices, resize_batch(batch, spec), strict=True):
                out[i] = image
    return out  # type: ignore[return-value]


def load_nvimgcodec() -> Any:
    """Import ``nvidia.nvimgcodec``; raise ``GpuDecodeUnavailable`` with the install hint."""
    try:
        from nvidia import nvimgcodec
    except ImportError as exc:
        raise GpuDecodeUnavailable(
            f"nvImageCodec is not installed ({exc}): pip install 'adclassify[gpu]' "
            "(nvidia-nvimgcodec-cu13, nvidia-nvjpeg)"
        ) from exc
    return nvimgcodec


class NvImageCodec:
    """``BatchDecode`` with nvImageCodec: hardware JPEG engines where present, CUDA otherwise, never the CPU."""

    def __init__(self, device: torch.device, options: str = "") -> None:
        codec = load_nvimgcodec()
        self.codec, self.device = codec, device
        index = device.index if device.index is not None else torch.cuda.current_device()
        kinds = (codec.BackendKind.HW_GPU_ONLY, codec.BackendKind.GPU_ONLY, codec.BackendKind.HYBRID_CPU_GPU)
        try:
            self.decoder = codec.Decoder(device_id=index, backends=[codec.Backend(k) for k in kinds], options=options)
        except RuntimeError as exc:
            raise GpuDecodeUnavailable(f"nvImageCodec cannot start on {device}: {exc}") from exc
        self.params = codec.DecodeParams(
            apply_exif_orientation=False, color_spec=codec.ColorSpec.SRGB, sample_format=codec.SampleFormat.I_RGB
        )

    def __call__(self, images: Sequence[bytes], stream: int) -> list[torch.Tensor | None]:
        """Decode a batch in one call; an image nvImageCodec cannot parse or decode comes back None."""
        parsed: list[tuple[int, Any]] = []
        for i, data in enumerate(images):
            try:
                parsed.append((i, self.codec.CodeStream(data)))
            except RuntimeError:  # "Failed to get image info": Pillow gets its turn
                continue
        out: list[torch.Tensor | None] = [None] * len(images)
        if not parsed:
            return out
        decoded = self.decoder.decode([s for _, s in parsed], params=self.params, cuda_stream=stream)
        for (i, _), image in zip(parsed, decoded, strict=True):
            out[i] = None if image is None else self._tensor(image)
        return out

    def _tensor(self, image: Any) -> torch.Tensor | None:
        if image.buffer_kind != self.codec.ImageBufferKind.STRIDED_DEVICE:
            return None  # a host-side result: not expected from the GPU backends; Pillow decodes it instead
        tensor = torch.as_tensor(image, device=self.device)  # zero-copy through __cuda_array_interface__
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(-1)
        if tensor.shape[-1] == 1:
            tensor = tensor.expand(-1, -1, 3)
        return tensor if tensor.dim() == 3 and tensor.shape[-1] == 3 and tensor.dtype == torch.uint8 else None


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
        self.tasks: queue.Queue[tuple[bytes, Done] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="gpu-decode", daemon=True)
        self.thread.start()

    def submit(self, data: bytes, done: Done) -> None:
        """Queue one image for the next batch."""
        self.tasks.put((data, done))

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
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    task = self.tasks.get_nowait()
                except queue.Empty:
                    break
                if task is None:
                    stopping = True
                    break
                batch.append(task)
            try:
                self._run(batch)
            except Exception:  # a consumer's callback failed: the thread must live on for everything queued after
                log.exception("gpu decode: a batch of %d failed in its callbacks", len(batch))

    def _run(self, batch: list[tuple[bytes, Done]]) -> None:
        """Route each image, decode the GPU's share together, hand every result on."""
        start = time.monotonic()
        gpu: list[tuple[bytes, Done, Header]] = []
        for data, done in batch:
            try:
                header = read_header(data, self.limits)
            except ImageError as exc:
                self.routes["refused"] += 1
                done(DecodeResult(None, JobError(exc.kind, str(exc)), start, (time.monotonic() - start) * 1000))
                continue
            if header.cpu_reason:
                self.routes[f"cpu: {header.cpu_reason}"] += 1
                self.fallback.submit(data, done)
            else:
                gpu.append((data, done, header))
        part: list[tuple[bytes, Done, Header]] = []
        for item in gpu:  # one decode call per BATCH_PIXELS of source pixels
            if part and sum(h.width * h.height for _, _, h in part) + item[2].width * item[2].height > BATCH_PIXELS:
                self._decode(part, start)
                part = []
            part.append(item)
        if part:
            self._decode(part, start)

    def _decode(self, gpu: list[tuple[bytes, Done, Header]], start: float) -> None:
        outputs: list[torch.Tensor | None]
        try:
            with self._on_stream():
                decoded = self.batch_decode([data for data, _, _ in gpu], self._stream_handle())
                ok = [i for i, image in enumerate(decoded) if image is not None]
                prepared = prepare([decoded[i] for i in ok], [gpu[i][2] for i in ok], self.spec)
                outputs = [None] * len(gpu)
                for i, image in zip(ok, prepared, strict=True):
                    outputs[i] = image
                self._finish()
        except (RuntimeError, ValueError, TypeError) as exc:  # the whole batch failed on the device: Pillow takes it
            log.warning("gpu decode failed for a batch of %d (%s): decoding it on the CPU", len(gpu), exc)
            outputs = [None] * len(gpu)
        ms = (time.monotonic() - start) * 1000
        for (data, done, _), image in zip(gpu, outputs, strict=True):
            if image is None:
                self.routes["gpu failed"] += 1
                self.fallback.submit(data, done)
            else:
                self.routes["gpu"] += 1
                done(DecodeResult(image, None, start, ms))

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
) -> GpuDecoder:
    """A ``GpuDecoder`` on nvImageCodec, checked on a small JPEG first; raise ``GpuDecodeUnavailable``."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise GpuDecodeUnavailable(
            f"GPU decoding needs a CUDA device, not {dev}"
            if dev.type != "cuda"
            else "GPU decoding needs a CUDA device, and torch sees none"
        )
    codec = NvImageCodec(dev, options)
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
