"""New model versions without dropping a job: reload ``--model`` in the background, then switch between batches.

``SIGHUP`` (``request()``) or ``--model-watch-s N`` (the file's identity polled: a symlink flip or a
new file at the path) makes the reloader load the model at ``--model`` again on its own thread, warm
it on every bucket (the load warms), and check that it answers the warm-up batch; then the predictor
runs it from the next batch on (at once on an idle worker). Jobs in hand finish on the model that started
them, and every result names the tag that produced it. A model that fails to load, warm or answer is refused
with one log line (and ``refused``, counted); the old one keeps serving.

Processes that share a device and a ``--reload-lock`` file (the launcher gives its K children on a device
one) reload one at a time: each holds a copy of the weights beside its serving one while it loads, so K at
once would need K spare copies of device memory; one at a time, one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .backoff import Backoff
from .infer import Predictor
from .model import Classifier, ModelError
from .modelfile import read_info

log = logging.getLogger(__name__)
OOM_RETRY_S, OOM_RETRY_MAX_S = 30.0, 600.0  # a reload out of memory: first retry, longest wait between retries
TURN_WAIT_MAX_S = 600.0  # a sibling's reload taking longer than this (hung?) is not waited for any more


class ReloadTurn:
    """One reload at a time among the processes sharing ``path`` (an ``flock``: the kernel releases it when its
    holder dies, so a child killed mid-reload never blocks its siblings). No path: always our turn."""

    def __init__(self, path: str = "") -> None:
        self.path, self.fd, self.held = path, -1, False
        if path:
            try:
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                log.warning("model reload: cannot open the lock %s (%s); reloads won't wait for others", path, exc)

    def take(self, stopping: threading.Event, max_wait_s: float | None = None) -> bool:
        """Wait for our turn; False if ``stopping`` was set first. Past ``max_wait_s`` go on without it (logged)."""
        if self.fd < 0:
            return True
        deadline = time.monotonic() + (TURN_WAIT_MAX_S if max_wait_s is None else max_wait_s)
        waited = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.held = True
                return True
            except BlockingIOError:
                pass
            if not waited:
                log.info("model reload: waiting for another worker on this device to finish its reload")
                waited = True
            if time.monotonic() >= deadline:
                log.warning("model reload: another worker's reload has held %s too long; loading anyway", self.path)
                return True
            if stopping.wait(0.05):
                return False

    def give(self) -> None:
        if self.held:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.held = False

    def close(self) -> None:
        self.give()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


Identity = tuple[int, int, int, int, int]


def file_identity(path: str) -> Identity | None:
    """What changes when a deploy replaces the model: the resolved file's device, inode, mtime, size and ctime
    (``cp -p`` or ``rsync --inplace`` of a same-size file keeps the inode and the mtime, not the ctime)."""
    try:
        st = os.stat(Path(path).resolve())
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


class Reloader(threading.Thread):
    """Loads ``path`` again on request (or when its identity changes, every ``watch_s`` > 0) and swaps it in."""

    def __init__(
        self,
        path: str,
        predictor: Predictor,
        load: Callable[[str], Classifier],
        *,
        identity: Identity | None = None,
        watch_s: float = 0.0,
        on_swap: Callable[[str], None] | None = None,
        on_refuse: Callable[[], None] | None = None,
        wanted: threading.Event | None = None,
        turn: ReloadTurn | None = None,
    ) -> None:
        super().__init__(name="model-reloader", daemon=True)
        self.path, self.predictor, self.load, self.watch_s = path, predictor, load, watch_s
        self.on_swap = on_swap or (lambda tag: None)
        self.on_refuse = on_refuse or (lambda: None)
        self.wanted, self.stopping = wanted or threading.Event(), threading.Event()
        self.turn = turn or ReloadTurn()  # shared with the other processes on this device: one reload at a time
        self.identity = identity  # of the file the running model was loaded from (read before it was loaded)
        self.swapped = self.refused = 0
        # a file refused for running out of memory is tried again at a poll, after a back-off (each try loads a
        # copy beside the serving one); a new file at once
        self.short_of_memory: Identity | None = None
        self.retry_at, self.backoff = 0.0, Backoff(OOM_RETRY_S, max_s=OOM_RETRY_MAX_S)

    def request(self) -> None:
        """Reload now (``SIGHUP``); safe from a signal handler."""
        self.wanted.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wanted.set()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.wanted.wait(self.watch_s if self.watch_s > 0 else None)
                if self.stopping.is_set():
                    return
                if (self.wanted.is_set() or self._changed()) and self.turn.take(self.stopping):
                    self.wanted.clear()  # asked before the file is read (once our turn came): this reload answers it
                    try:
                        self.reload()
                    except Exception:  # an on_swap/on_refuse hook's bug: this process keeps taking reloads
                        log.exception("model reload: unexpected error; later reloads still run")
                    finally:
                        self.turn.give()
        finally:
            self.turn.close()

    def _changed(self) -> bool:
        now = file_identity(self.path)
        if now is None or now == self.identity:
            return False
        return now != self.short_of_memory or time.monotonic() >= self.retry_at

    def _short_of_memory(self, identity: Identity | None) -> None:
        if identity != self.short_of_memory:
            self.backoff.reset()
        self.short_of_memory, self.retry_at = identity, time.monotonic() + self.backoff.next()

    def reload(self) -> bool:
        """Load, warm and check the model at ``path``; swap it in. False (logged, counted) if refused."""
        resolved = str(Path(self.path).resolve())  # one file for the identity and every open: a flip meanwhile
        identity = file_identity(resolved)  # is the next reload's
        try:
            tag = self._swap_in(resolved)
        except Exception as exc:  # whatever a loader raises, the old model keeps serving
            refusal, short_of_memory = _first_line(exc), isinstance(exc, torch.OutOfMemoryError)
        else:
            refusal, short_of_memory = "", False
        # past the except block: the refused copy (held by the exception's frames until then) is garbage now
        if torch.cuda.is_available():  # its blocks (or the old version's and the warm-up's) back to the device
            torch.cuda.empty_cache()  # before the turn goes to the next process on it: one spare copy at a time
        if refusal:
            self._refuse(refusal, short_of_memory, identity)
            return False
        self.identity, self.short_of_memory = identity, None
        self.backoff.reset()
        self.swapped += 1
        log.info("model %s loaded and warmed: it runs from the next batch on (at once if idle)", tag)
        self.on_swap(tag)
        return True

    def _swap_in(self, resolved: str) -> str:
        """Load, warm and check the model at ``resolved``, and hand it to the predictor; its tag."""
        info = read_info(resolved)  # a new input size is refused before any weight is loaded
        if info.preprocess != self.predictor.model.info.preprocess:
            raise ValueError(
                f"the new model's preprocessing ({info.preprocess}) differs from the running model's "
                f"({self.predictor.model.info.preprocess}): restart the worker to change it"
            )
        model = self.load(resolved)
        probe = torch.zeros((1, *self.predictor.shape), dtype=torch.uint8)
        scores = model.logits(probe.to(model.device))
        if scores.shape[0] != 1 or not bool(torch.isfinite(scores).all()):
            raise ModelError("the new model's answer to the warm-up batch is not finite scores for one image")
        self.predictor.swap(model)
        if not self.predictor.settle():  # the old version out of the predictor now, even on an idle worker
            log.warning("model reload: the swap waits for the next batch; the old version is freed then")
        return model.info.tag

    def _refuse(self, why: str, short_of_memory: bool, identity: Identity | None) -> None:
        self.refused += 1
        if short_of_memory:  # may pass: tried again after a back-off
            self._short_of_memory(identity)
        else:
            self.identity = identity  # don't retry the same bad file on every poll
        log.error("model reload refused, %s keeps serving: %s", self.predictor.tag, why)
        self.on_refuse()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
