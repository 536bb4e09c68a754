"""Load a classifier with its metadata, in either model format, warm it up, and predict whole batches.

``load_model`` picks the loader by the file: an AOTInductor ``.pt2`` package (worker.pt2, no TorchScript call)
or a TorchScript file; both give the same ``Classifier``, so the loop never knows which it runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .modelfile import EXTRA_FILES, ModelError, ModelInfo, is_package, model_info
from .pt2 import PRECISIONS, TRANSIENT, load_package

__all__ = [
    "DTYPES",
    "EXTRA_FILES",
    "Classifier",
    "ModelError",
    "ModelInfo",
    "bucket_sizes",
    "configure_torch",
    "load_model",
    "optimized",
    "read_extra_files",
]

log = logging.getLogger(__name__)

DTYPES = {name: dtype for dtype, name in PRECISIONS.items()}


def read_extra_files(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, ModelInfo]:
    """Load a TorchScript file onto ``device`` with its ``_extra_files``; raise ``ModelError`` if incomplete."""
    extra = dict.fromkeys(EXTRA_FILES, "")
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except TRANSIENT:  # the device full (another process): not the file's fault, a restart may load it
        raise
    except (RuntimeError, ValueError) as exc:  # not a zip, not TorchScript: torch's own multi-line text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a TorchScript model file or a .pt2 package ({first[:160]})") from exc
    return module, model_info(path, extra)


def bucket_sizes(max_batch: int) -> list[int]:
    """Batch sizes we pad to: powers of two below ``max_batch``, and ``max_batch`` itself."""
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return [*sizes, max_batch]


@dataclass
class TopK:
    """A batch's top-k on its way to the host: ``wait()`` for the ``(label, probability)`` lists."""

    host: torch.Tensor  # [n, 2k]: the k probabilities, then the k class indices (as floats)
    event: Any  # torch.cuda.Event that marks the copy done; None when it is done already (CPU)
    labels: tuple[str, ...]

    def wait(self) -> list[list[tuple[str, float]]]:
        if self.event is not None:
            self.event.synchronize()  # releases the GIL while the device finishes
        k, labels = self.host.shape[1] // 2, self.labels
        rows = self.host.tolist()
        return [
            [
                (labels[int(i)] if int(i) < len(labels) else str(int(i)), s)
                for s, i in zip(row[:k], row[k:], strict=True)
            ]
            for row in rows
        ]


@dataclass
class Classifier:
    """A loaded model on one device; ``predict`` takes a uint8 ``[B, H, W, 3]`` batch."""

    module: torch.nn.Module
    info: ModelInfo
    device: torch.device
    dtype: torch.dtype = torch.float32
    buckets: list[int] = field(default_factory=lambda: [1])
    warmed: dict[int, float] = field(default_factory=dict)  # seconds per batch, by bucket, at the last warm-up
    channels_last: bool = False  # NHWC float input (and weights): tensor cores' layout; the uint8 batch already is

    def __post_init__(self) -> None:
        pre = self.info.preprocess
        shape = (1, 3, 1, 1)
        # Fold [0, 1] scaling into the normalisation: x * scale + shift == (x / 255 - mean) / std.
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in pre.std], device=self.device).view(shape)
        shift = [-m / s for m, s in zip(pre.mean, pre.std, strict=True)]
        self._shift = torch.tensor(shift, device=self.device).view(shape)

    def bucket_for(self, n: int) -> int:
        """The smallest warmed batch size that holds ``n`` images."""
        return next((b for b in self.buckets if b >= n), n)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the model on a uint8 ``[B, H, W, 3]`` batch (padded to a bucket); float32 logits."""
        n = batch.shape[0]
        padded = self.bucket_for(n)
        if padded > n:
            batch = torch.cat([batch, batch.new_zeros((padded - n, *batch.shape[1:]))])
        with torch.inference_mode():
            if self.device.type == "cuda" and batch.device.type == "cpu":
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            elif batch.device != self.device:  # already on a device (the GPU decoder's tensors)
                batch = batch.to(self.device)
            # NHWC -> NCHW on the uint8 bytes first: 2.8x cheaper than converting the float copy (CPU, measured);
            # channels_last keeps the NHWC bytes' layout (the permuted view is channels_last already)
            x = batch.permute(0, 3, 1, 2)
            x = (x if self.channels_last else x.contiguous()).float().mul_(self._scale).add_(self._shift)
            x = x.to(self.dtype)
            out = self.module(x)
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != padded:
                raise ModelError(f"model must map [B, 3, H, W] to logits [B, C], got {_shape(out)}")
            return out[:n].float()

    def predict(self, batch: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k ``(label, probability)`` per image of the batch."""
        return self.start_topk(batch, k).wait()

    def start_topk(self, batch: torch.Tensor, k: int = 5) -> TopK:
        """Launch the forward pass and the top-k; on CUDA the answer comes back in one non-blocking copy to
        pinned host memory, marked by an event (``TopK.wait``), so the caller may launch the next batch first."""
        with torch.inference_mode():
            probs = torch.softmax(self.logits(batch), dim=1)
            scores, idx = probs.topk(min(k, probs.shape[1]), dim=1)
            packed = torch.cat([scores, idx.to(scores.dtype)], dim=1)  # float32 holds class indices exactly
            if packed.device.type != "cuda":
                return TopK(packed, None, self.info.labels)
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(packed.device))
            return TopK(host, event, self.info.labels)

    def warm_up(self, rounds: int = 2) -> dict[int, float]:
        """Run every bucket size so cuDNN tunes before traffic; return seconds per batch by size."""
        height, width = self.info.preprocess.size
        timings: dict[int, float] = {}
        for size in self.buckets:
            batch = torch.randint(0, 256, (size, height, width, 3), dtype=torch.uint8)
            for _ in range(rounds):
                start = time.perf_counter()
                self.logits(batch)
                self._sync()
                timings[size] = time.perf_counter() - start
        self.warmed = timings
        return timings

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _shape(out: object) -> str:
    return str(tuple(out.shape)) if isinstance(out, torch.Tensor) else type(out).__name__


def configure_torch(device: torch.device) -> None:
    """The process-wide switches: cuDNN on and autotuning (inputs always have fixed shapes)."""
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def load_model(
    path: str | Path,
    device: str = "cpu",
    max_batch: int = 1,
    precision: str = "fp32",
    optimize: str = "off",
    channels_last: bool = False,
) -> Classifier:
    """Load a model file onto ``device`` in eval mode, with buckets up to ``max_batch``.

    A ``.pt2`` package runs as compiled: ``precision`` must be the one it was exported with (``auto``: it is).
    A TorchScript file is cast to ``precision`` (``auto``: fp32; ``worker.precision`` tries fp16 on CUDA), in
    the ``channels_last`` layout if asked; with ``optimize="auto"`` it uses ``torch.jit.optimize_for_inference``
    (freeze, fold batch norms, fuse) when its outputs match the plain model's on a warm-up batch.
    """
    dev = torch.device(device)
    configure_torch(dev)
    dtype = DTYPES.get(precision, torch.float32)  # auto: fp32 for a TorchScript file
    if is_package(path):
        module, info = load_package(path, dev)
        if precision == "auto":
            dtype = module.dtype
        if module.dtype != dtype:
            built = PRECISIONS.get(module.dtype, str(module.dtype))
            raise ModelError(
                f"{path}: package compiled for {built}, cannot run in {precision}; "
                f"export it again with --precision {precision}"
            )
        kind = "pt2"
    else:
        script, info = read_extra_files(path, dev)
        module, kind = script.to(dev).to(dtype).eval(), "torchscript"
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
    classifier = Classifier(module=module, info=info, device=dev, dtype=dtype, buckets=bucket_sizes(max_batch))
    classifier.channels_last = channels_last and kind == "torchscript"
    if optimize == "auto" and kind == "torchscript":
        classifier.module = optimized(classifier)
    log.info(
        "loaded model=%s path=%s format=%s device=%s precision=%s channels_last=%s optimized=%s",
        info.tag,
        path,
        kind,
        dev,
        PRECISIONS[dtype],
        classifier.channels_last,
        classifier.module is not module,
    )
    return classifier


def optimized(model: Classifier) -> torch.nn.Module:
    """``optimize_for_inference`` of the model if it agrees with the plain one (same top-1, logits close)."""
    plain = model.module
    if not isinstance(plain, torch.jit.ScriptModule):
        return plain
    height, width = model.info.preprocess.size
    batch = torch.randint(
        0, 256, (model.buckets[-1], height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    try:
        with torch.inference_mode():
            fast = torch.jit.optimize_for_inference(torch.jit.freeze(plain))
            want = model.logits(batch)
            model.module = fast
            got = model.logits(batch)
    except torch.OutOfMemoryError:  # the device full, not the optimisation's fault: the load fails (a reload retries)
        raise
    except (RuntimeError, ValueError) as exc:
        log.warning("optimize_for_inference failed (%s): using the plain model", exc)
        return plain
    finally:
        model.module = plain
    tol = 1e-3 if model.dtype == torch.float32 else 3e-2
    diff = (got - want).abs().max().item()
    same = torch.equal(got.argmax(1), want.argmax(1)) and diff <= tol * max(1.0, want.abs().max().item())
    log.info(
        "optimize_for_inference vs plain on the warm-up batch: max abs diff %.2e, %s",
        diff,
        "using it" if same else "outputs differ: using the plain model",
    )
    return fast if same else plain
