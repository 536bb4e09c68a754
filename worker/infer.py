"""The inference stage: stack decoded pixels, one forward pass, top-k per image; out-of-memory splits the batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import torch

from .decode.gate import Gate, NoGate
from .errors import JobError
from .model import Classifier, TopK

log = logging.getLogger(__name__)

Prediction = list[tuple[str, float]] | JobError


class Predictor:
    """Runs batches on a ``Classifier``; ``cap`` is the largest batch, lowered for good after an OOM."""

    def __init__(self, model: Classifier, cap: int, topk: int = 5, gate: Gate | None = None) -> None:
        self.model, self.cap, self.topk, self.gate = model, cap, topk, gate or NoGate()
        self.tag = model.info.tag
        height, width = model.info.preprocess.size
        self.shape = (height, width, 3)
        self.threads = torch.get_num_threads()  # OpenMP's team size is per thread: the infer thread gets ours
        self._pending: Classifier | None = None
        self._swap_lock = threading.Lock()
        self._launching = threading.Lock()  # held while a batch starts: ``settle`` swaps between two launches

    def swap(self, model: Classifier) -> None:
        """Run ``model`` from the next batch on (the batch in the forward pass finishes on the old one, and its
        results name the old tag). Its preprocessing must be the running model's (decodes already in
        flight were made for it): ``ValueError`` otherwise."""
        if model.info.preprocess != self.model.info.preprocess:
            raise ValueError(
                f"the new model's preprocessing ({model.info.preprocess}) differs from the running model's "
                f"({self.model.info.preprocess}): restart the worker to change it"
            )
        with self._swap_lock:
            self._pending = model

    def settle(self, timeout_s: float = 10.0) -> bool:
        """Run a swapped-in model now rather than at the next batch (an idle worker would otherwise hold both
        versions until traffic comes): between two launches, or at the end of the one starting now (``launch``
        takes it too); False if it was still pending after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self._pending is not None:
            if self._launching.acquire(timeout=0.05):
                try:
                    if self._pending is not None:
                        self._take_pending()
                finally:
                    self._launching.release()
            elif time.monotonic() > deadline:
                return False
        return True

    def _take_pending(self) -> None:
        with self._swap_lock:
            model, self._pending = self._pending, None
        if model is not None:
            if model.buckets[-1] > self.cap:  # a cap an out-of-memory lowered meanwhile holds for it too
                model.buckets = [b for b in model.buckets if b < self.cap] + [self.cap]
            old, self.model, self.tag = self.tag, model, model.info.tag
            log.info("model swapped between batches: %s -> %s", old, self.tag)

    def predict(self, pixels: Sequence[bytes | torch.Tensor]) -> tuple[list[Prediction], float]:
        """Top-k for every image (``H*W*3`` uint8 bytes, or a uint8 ``H x W x 3`` tensor from the GPU decoder)
        in one forward pass; and the ms it took.

        A model failure fails the batch's jobs with a retryable ``model_error``."""
        return self.launch(pixels).result()

    @property
    def overlaps(self) -> bool:
        """Whether a launched batch runs on while the caller forms and launches the next (CUDA; a CPU forward
        pass is done when ``launch`` returns)."""
        return self.model.device.type == "cuda"

    def launch(self, pixels: Sequence[bytes | torch.Tensor]) -> Launched:
        """Start the forward pass of a batch; ``result()`` waits for its top-k (see ``predict``)."""
        with self._launching:
            if self._pending is not None:
                self._take_pending()
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
            start, tag = time.perf_counter(), self.tag  # the tag of the model that runs this batch
            if not pixels:
                return Launched([], start, [], tag=tag)
            try:
                with self.gate.forward(len(pixels)):
                    parts = self._forward(self._stack(pixels))
            except (RuntimeError, ValueError) as exc:
                log.exception("model forward failed on a batch of %d", len(pixels))
                return Launched([], start, [model_error(exc)] * len(pixels), tag=tag)
            if self._pending is not None:  # swapped in during this launch: the next batch's, and the old one goes
                self._take_pending()  # now (a reloader's settle may lose the lock to back-to-back launches)
            return Launched(parts, start, None, len(pixels), tag)

    def _stack(self, pixels: Sequence[bytes | torch.Tensor]) -> torch.Tensor:
        """One uint8 ``[B, H, W, 3]`` tensor, each image copied once: on the host for Pillow's bytes, on the
        device when the GPU decoder gave tensors (the CPU fallback's bytes in such a batch are moved there)."""
        tensors = [p for p in pixels if isinstance(p, torch.Tensor)]
        if not tensors:
            return self._stack_bytes(pixels)  # type: ignore[arg-type]
        device = tensors[0].device
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
        parts = []
        for image in pixels:
            if isinstance(image, torch.Tensor):
                if stream is not None:  # made on the decoder's stream: not reused before this stream is done
                    image.record_stream(stream)
                parts.append(image.view(*self.shape))
            else:
                parts.append(self._stack_bytes([image])[0].to(device))
        return torch.stack(parts)

    def _stack_bytes(self, pixels: Sequence[bytes]) -> torch.Tensor:
        size = len(pixels[0])
        buf = bytearray(size * len(pixels))
        view = memoryview(buf)
        for i, image in enumerate(pixels):
            view[i * size : (i + 1) * size] = image
        return torch.frombuffer(buf, dtype=torch.uint8).view(len(pixels), *self.shape)

    def _forward(self, batch: torch.Tensor) -> list[TopK]:
        """The top-k launched for a batch; on out-of-memory, split it in halves and, once a half ran, lower the
        batch cap for good. The halves run after the ``except`` block: inside it, the failed pass's traceback
        would keep its tensors alive (and the cache could not give them back), making the halves fail too."""
        try:
            return [self.model.start_topk(batch, k=self.topk)]
        except torch.OutOfMemoryError:
            if batch.shape[0] == 1:
                raise
        n = batch.shape[0]
        half = (n + 1) // 2
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
        buckets = self.model.buckets
        if half < self.cap:  # the halves run at their own size, not padded up to a bucket of the old cap
            self.model.buckets = [b for b in buckets if b < half] + [half]
        try:
            first = self._forward(batch[:half])
        except torch.OutOfMemoryError:  # not even one image fits: the buckets and cap as they were
            self.model.buckets = buckets
            raise
        if half < self.cap:
            self.cap = half
            log.warning("out of memory at batch %d: batch cap lowered to %d", n, half)
        return first + self._forward(batch[half:])


def model_error(exc: BaseException) -> JobError:
    """A failure of the model on a batch: retryable (another worker, another model version may run it)."""
    return JobError("model_error", f"{type(exc).__name__}: {exc}", retryable=True)


class Launched:
    """A batch in the forward pass: ``result()`` is its predictions and the ms from launch to answers; ``tag``
    names the model that runs it."""

    def __init__(
        self, parts: list[TopK], start: float, preds: list[Prediction] | None, size: int = 0, tag: str = ""
    ) -> None:
        self.parts, self.start, self.preds, self.size, self.tag = parts, start, preds, size, tag

    def result(self) -> tuple[list[Prediction], float]:
        if self.preds is None:
            try:
                self.preds = [pred for part in self.parts for pred in part.wait()]
            except (RuntimeError, ValueError) as exc:  # a device error surfaces at the wait
                log.exception("model forward failed on a batch of %d", self.size)
                self.preds = [model_error(exc)] * self.size
        return self.preds, (time.perf_counter() - self.start) * 1000
