"""Sharing a CPU between decoding and the forward pass: decodes run together, a forward pass runs alone.

On a CPU device the forward pass's OpenMP team wants every core; a decode thread that runs beside
it stalls the team at its barriers (EfficientNet-Lite0 on 2 cores: 29.5 -> 36.0 ms per image).
With a closed gate, decoding fills the gaps between forward passes (in parallel, on every core)
and a forward pass waits only for the decodes already running. That pays only while the forward
pass is the bottleneck: when decoding is (a cheap model), holding decodes back costs more than
the stalls, and under light load it only delays the next job. So the gate closes only while a
forward pass costs more than twice a decode per image (running averages of both) and a full
batch is already decoded and waiting; on a GPU there is no gate at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Gate:
    """Shared holders (decodes) or one exclusive holder (a forward pass), the exclusive one first;
    closed only while ``active`` (a forward pass costs more per image than a decode)."""

    SMOOTHING = 0.2  # weight of the newest sample in the running averages

    MARGIN = 2.0  # the forward pass must cost this many decodes per image before decodes yield to it

    def __init__(self, forward_ms_per_image: float | None = None, *, batch: int = 1, always: bool = False) -> None:
        self.cond = threading.Condition()
        self.shared = 0
        self.exclusive = False
        self.waiting = 0  # exclusive holders waiting: new shared holders queue behind them
        self.forward_ms = forward_ms_per_image  # running averages, per image
        self.decode_ms: float | None = None
        self.always = always  # --decode-overlap off: closed for every forward pass
        self.batch = batch  # a full batch: how many decoded images waiting make further decoding not urgent
        self.ahead = 0  # images decoded and not yet in a forward pass

    @property
    def active(self) -> bool:
        """Whether the forward pass is the bottleneck (then it runs alone)."""
        if self.always:
            return True
        if self.forward_ms is None or self.decode_ms is None or self.ahead < self.batch:
            return False
        return self.forward_ms > self.MARGIN * self.decode_ms

    def decoded(self) -> None:
        """One image is decoded and waits for a batch."""
        with self.cond:
            self.ahead += 1

    def passed_over(self, images: int) -> None:
        """``images`` decoded ones go into no forward pass (repeats of a photo in their batch, which runs once):
        no longer waiting either (else each repeat would count as waiting for good, and the gate stay shut)."""
        with self.cond:
            self.ahead = max(0, self.ahead - images)
            self.cond.notify_all()

    def begin_decode(self) -> float:
        """One image starts decoding (once the gate lets it); when, for ``end_decode``."""
        with self.cond:
            while self.active and (self.exclusive or self.waiting):
                self.cond.wait()
            self.shared += 1
        return time.perf_counter()

    def end_decode(self, start: float) -> None:
        """That image is done."""
        with self.cond:
            self.shared -= 1
            self.decode_ms = _average(self.decode_ms, (time.perf_counter() - start) * 1000)
            self.cond.notify_all()

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Held while one image decodes."""
        start = self.begin_decode()
        try:
            yield
        finally:
            self.end_decode(start)

    @contextmanager
    def forward(self, images: int = 1) -> Iterator[None]:
        """Held while a forward pass over ``images`` runs."""
        with self.cond:
            self.waiting += 1
            while self.exclusive or (self.active and self.shared):
                self.cond.wait()
            self.waiting -= 1
            self.exclusive = True
            self.ahead = max(0, self.ahead - images)
        start = time.perf_counter()
        try:
            yield
        finally:
            with self.cond:
                self.exclusive = False
                self.forward_ms = _average(self.forward_ms, (time.perf_counter() - start) * 1000 / max(1, images))
                self.cond.notify_all()


def _average(old: float | None, new: float) -> float:
    return new if old is None else old + Gate.SMOOTHING * (new - old)


class NoGate(Gate):
    """Decoding overlaps the forward pass (GPUs)."""

    def decoded(self) -> None:
        pass

    def passed_over(self, images: int) -> None:
        pass

    def begin_decode(self) -> float:
        return 0.0

    def end_decode(self, start: float) -> None:
        pass

    @contextmanager
    def decoding(self) -> Iterator[None]:
        yield

    @contextmanager
    def forward(self, images: int = 1) -> Iterator[None]:
        yield
