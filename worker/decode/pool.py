"""Decode pools: threads (Pillow releases the GIL while decoding) or processes (``--decode-workers N``).

Processes get the image bytes through a pipe and hand the decoded pixels back through shared
memory (one ``SharedMemory`` block per process, copied out once), never pickled. A process whose
decode runs past ``timeout_s`` is killed and replaced, and that image fails ``decode_timeout``.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import TypeVar

from ..errors import JobError
from . import Decoded, DecodeResult, submit_each
from .budget import PixelBudget, header_pixels
from .cpu import ImageError, Limits, Preprocess, decode
from .gate import Gate, NoGate
from .jpegscan import UNREAD, JpegHeader, scan_jpeg

log = logging.getLogger(__name__)
T = TypeVar("T")


def decode_one(data: bytes, spec: Preprocess, limits: Limits, jpeg: JpegHeader | None = UNREAD) -> DecodeResult:
    """Decode in this thread; bad input becomes a ``JobError`` (deterministic: never retried)."""
    start = time.monotonic()
    try:
        pixels, error = decode(data, spec, limits, jpeg), None
    except ImageError as exc:
        pixels, error = None, JobError(exc.kind, str(exc))
    return DecodeResult(pixels, error, start, (time.monotonic() - start) * 1000)


def unexpected(exc: Exception, start: float) -> DecodeResult:
    """An image whose decode failed in a way no image should (MemoryError, too many open files, a bug): logged
    with its traceback, and a failed result for that image alone, retried (``decode_error``): the photo may
    well be fine."""
    log.error("decoding an image failed unexpectedly", exc_info=exc)
    error = JobError("decode_error", f"the decoder failed: {type(exc).__name__}: {exc}"[:300], retryable=True)
    return DecodeResult(None, error, start, (time.monotonic() - start) * 1000)


def deliver(done: Callable[[T], None], value: T) -> None:
    """Call a pool thread's ``done``; one that raises is logged, and the thread goes on with the next image
    (a take's other images must not wait on it: their jobs would stall)."""
    try:
        done(value)
    except Exception:
        log.exception("a decoded image's hand-off failed")


class ThreadDecoder:
    """``threads`` decoding threads; each decode holds ``gate`` (see ``worker.decode.gate``) and its
    pixels from ``budget`` (default: ``limits.max_pixels``, so one image at the limit decodes alone)."""

    backend = "cpu"  # what decodes the pixels (the result cache's key names it: ``producer.wire.cache``)

    def __init__(
        self,
        spec: Preprocess,
        limits: Limits,
        threads: int,
        gate: Gate | None = None,
        budget: PixelBudget | None = None,
    ) -> None:
        self.spec, self.limits, self.gate = spec, limits, gate or NoGate()
        self.budget = budget or PixelBudget(limits.max_pixels)
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def submit(self, data: bytes, done: Callable[[DecodeResult], None]) -> None:
        """Decode on a pool thread and call ``done`` there."""
        self.pool.submit(lambda: deliver(done, self._run(data)))

    def submit_many(self, images: Sequence[bytes], done: Decoded) -> None:
        """The images in order, each on the next free pool thread; ``done`` once per image. One pool task per
        thread drains the take (not one task, future and lock per image: ~6 µs of Python each)."""
        pending = deque(enumerate(images))
        for _ in range(min(self.threads, len(pending))):
            self.pool.submit(self._drain, pending, done)

    def _drain(self, pending: deque[tuple[int, bytes]], done: Decoded) -> None:
        while True:
            try:
                i, data = pending.popleft()
            except IndexError:
                return
            deliver(done, [(i, self._run(data))])

    def _run(self, data: bytes) -> DecodeResult:
        start = time.monotonic()
        try:
            jpeg = scan_jpeg(data)  # one walk of a JPEG's segments: the budget's size and the direct decode's header
            # the budget and the gate by hand, not as context managers: ~3 µs less per image
            held = self.budget.acquire(header_pixels(data, jpeg))
            try:
                began = self.gate.begin_decode()
                try:
                    result = decode_one(data, self.spec, self.limits, jpeg)
                finally:
                    self.gate.end_decode(began)
            finally:
                self.budget.release(held)
        except Exception as exc:  # a decoder bug, MemoryError: this image fails, never silently (nor its take-mates)
            return unexpected(exc, start)
        if result.error is None:
            self.gate.decoded()
        return result

    def close(self) -> None:
        """Wait for every submitted image."""
        self.pool.shutdown(wait=True)


def _child(conn: Connection, shm_name: str, spec: Preprocess, limits: Limits) -> None:
    """A decode process: bytes in through ``conn``, pixels out through the shared block."""
    shm = SharedMemory(shm_name)
    try:
        while True:
            data = conn.recv_bytes()
            start = time.monotonic()
            try:
                pixels = decode(data, spec, limits)
                shm.buf[: len(pixels)] = pixels
                conn.send((len(pixels), None, None, (time.monotonic() - start) * 1000))
            except ImageError as exc:
                conn.send((0, exc.kind, str(exc), (time.monotonic() - start) * 1000))
            except MemoryError as exc:  # this process's memory, not the image: retried (as in ``unexpected``)
                conn.send((0, "decode_error", f"MemoryError: {exc}", (time.monotonic() - start) * 1000))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        shm.close()


def death_error(exit_code: int | None) -> JobError:
    """The error of an image whose decode process died under it: killed (SIGKILL: the kernel's out-of-memory
    killer, an operator) is the host's doing, retried as ``decode_error``; any other death (a crash in a decoder
    library) is the image's, ``unsupported_image``, not retried."""
    if exit_code == -signal.SIGKILL:
        return JobError("decode_error", "its decoder process was killed (out of memory?)", retryable=True)
    return JobError("unsupported_image", "the image crashed its decoder process")


class _Slot:
    """One decode process, its pipe and its shared block; restarted after a timeout or a crash."""

    def __init__(self, context: multiprocessing.context.SpawnContext, spec: Preprocess, limits: Limits) -> None:
        self.context, self.spec, self.limits = context, spec, limits
        self.shm = SharedMemory(create=True, size=spec.size[0] * spec.size[1] * 3)
        self.start()

    def start(self) -> None:
        self.conn, child = self.context.Pipe()
        self.proc = self.context.Process(
            target=_child, args=(child, self.shm.name, self.spec, self.limits), daemon=True, name="decode"
        )
        self.proc.start()
        child.close()

    def decode(self, data: bytes, timeout_s: float) -> DecodeResult:
        start = time.monotonic()
        try:
            if not self._send(data):
                self.restart("a new decode process did not take the image either")
                error = JobError("decode_error", "no decode process took the image; retried", retryable=True)
                return DecodeResult(None, error, start, (time.monotonic() - start) * 1000)
            if not self.conn.poll(timeout_s):
                self.restart(f"decode ran past {timeout_s} s")
                error = JobError("decode_timeout", f"decoding took longer than {timeout_s} s; the decoder was replaced")
                return DecodeResult(None, error, start, (time.monotonic() - start) * 1000)
            size, kind, message, ms = self.conn.recv()
        except (EOFError, OSError) as exc:  # it died while decoding this image
            self.proc.join(1)
            code = self.proc.exitcode  # before the restart's own kill
            self.restart(f"decode process died (exit status {code}): {exc}")
            return DecodeResult(None, death_error(code), start, (time.monotonic() - start) * 1000)
        if kind is not None:
            return DecodeResult(None, JobError(kind, message, retryable=kind == "decode_error"), start, ms)
        return DecodeResult(bytes(self.shm.buf[:size]), None, start, ms)

    def _send(self, data: bytes) -> bool:
        """Send an image; a process that was gone already (it died idle) is replaced first: not this image's doing.
        False when its replacement would not take it either (the host's trouble, never the image's)."""
        try:
            self.conn.send_bytes(data)
        except (EOFError, OSError) as exc:
            self.restart(f"decode process was gone: {exc}")
            try:
                self.conn.send_bytes(data)
            except (EOFError, OSError):
                return False
        return True

    def restart(self, why: str) -> None:
        log.warning("%s: replacing decode process %s", why, self.proc.pid)
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        self.start()

    def close(self) -> None:
        self.conn.close()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        self.shm.close()
        self.shm.unlink()


class ProcessDecoder:
    """``workers`` decode processes (spawned, torch-free), each fed by its own dispatcher thread."""

    backend = "cpu"  # what decodes the pixels (the result cache's key names it: ``producer.wire.cache``)

    def __init__(
        self,
        spec: Preprocess,
        limits: Limits,
        workers: int,
        timeout_s: float = 10.0,
        gate: Gate | None = None,
        budget: PixelBudget | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.timeout_s, self.gate = timeout_s, gate or NoGate()
        self.budget = budget or PixelBudget(limits.max_pixels)
        self.tasks: queue.Queue = queue.Queue()
        self.slots = [_Slot(context, spec, limits) for _ in range(workers)]
        self.threads = [
            threading.Thread(target=self._dispatch, args=(s,), name="decode-dispatch", daemon=True) for s in self.slots
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, data: bytes, done: Callable[[DecodeResult], None]) -> None:
        """Queue one image for the next free process."""
        self.tasks.put((data, done))

    def submit_many(self, images: Sequence[bytes], done: Decoded) -> None:
        """Each image to the next free process; ``done`` once per image."""
        submit_each(self, images, done)

    def _dispatch(self, slot: _Slot) -> None:
        while (task := self.tasks.get()) is not None:
            data, done = task
            result = self._decode_on(slot, data)
            if result.error is None:
                self.gate.decoded()
            deliver(done, result)

    def _decode_on(self, slot: _Slot, data: bytes) -> DecodeResult:
        """One image on ``slot``'s process; an unexpected failure fails this image only (as ``ThreadDecoder``),
        and one inside the exchange replaces the process (its pipe may hold a reply not read)."""
        start = time.monotonic()
        try:
            held = self.budget.acquire(header_pixels(data))
        except Exception as exc:
            return unexpected(exc, start)
        try:
            with self.gate.decoding():
                return slot.decode(data, self.timeout_s)
        except Exception as exc:
            try:
                slot.restart(f"decoding failed unexpectedly ({type(exc).__name__})")
            except Exception:  # too many open files, say: the next image's exchange tries again
                log.exception("could not replace a decode process")
            return unexpected(exc, start)
        finally:
            self.budget.release(held)

    def close(self) -> None:
        """Finish every queued image, then stop the processes."""
        for _ in self.threads:
            self.tasks.put(None)
        for thread in self.threads:
            thread.join()
        for slot in self.slots:
            slot.close()
