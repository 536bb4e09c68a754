"""Liveness and readiness: a watchdog on the pipeline's progress, and the probe endpoints.

``Health`` is what the worker knows about itself: the model is warmed, the last time Redis answered
the heartbeat, the last time the pipeline made progress. The ``Watchdog`` thread ends a worker whose
pipeline is wedged (a decode or a forward pass that never returns) while it holds jobs: after
``--stall-timeout-s`` without progress it stops the heartbeat, registers the death if Redis lets
it (the reaper then re-queues the jobs at once; otherwise when the key expires) and exits 3. A worker
whose model fails batch after batch (a broken GPU: a sticky CUDA error fails every forward pass in
milliseconds, so such a worker would take and fail jobs faster than the healthy ones) is ``broken``: the
watchdog ends it at once the same way, exiting 4, and a restart (the launcher's, or Kubernetes') gets a
fresh device context or shows a crash loop.
Idling (nothing in hand) and backing off from an unavailable Redis (each retry is progress) are
not stalls. ``ProbeServer`` serves ``/healthz`` (200 while not stalled), ``/readyz`` (200 once warmed
and Redis answered within a heartbeat TTL, else 503) and, when metrics are on, ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

log = logging.getLogger(__name__)

STALL_EXIT = 3
BROKEN_EXIT = 4


class Health:
    """Shared, thread-safe enough (single writes of floats and bools) state for the probes."""

    def __init__(self, redis_ttl_s: float) -> None:
        self.redis_ttl_s = redis_ttl_s
        self.warmed = False
        self.stalled = False
        self.broken: str | None = None  # why the model cannot run any batch (``break_down``)
        self.alarm = threading.Event()  # wakes the watchdog at once
        self.redis_ok_at = float("-inf")
        self.takes_failing: tuple[float, str] | None = None  # since when every take failed, and the last error
        self.progress_at = time.monotonic()
        self.registry: Any = None  # prometheus_client registry when metrics are on

    def progressed(self) -> None:
        """The pipeline did something that proves it is not wedged."""
        self.progress_at = time.monotonic()

    def break_down(self, reason: str) -> None:
        """The model fails every batch: the watchdog ends this worker now (``BROKEN_EXIT``)."""
        self.broken, self.stalled = reason, True
        self.alarm.set()

    def redis_answered(self) -> None:
        self.redis_ok_at = time.monotonic()

    def take_failed(self, error: Exception) -> None:
        """A take failed (the heartbeat may still answer: an ACL that lost the take's commands, a queue key of
        the wrong type)."""
        self.takes_failing = ((self.takes_failing or (time.monotonic(), ""))[0], str(error))

    def take_answered(self) -> None:
        self.takes_failing = None

    def ready(self) -> tuple[bool, str]:
        if not self.warmed:
            return False, "model warming up"
        if time.monotonic() - self.redis_ok_at > self.redis_ttl_s:
            return False, "redis unreachable"
        failing = self.takes_failing
        if failing is not None and time.monotonic() - failing[0] > self.redis_ttl_s:
            return False, f"every take failed for {time.monotonic() - failing[0]:.0f} s: {failing[1]}"
        return True, "ready"


class Watchdog(threading.Thread):
    """Exits the process (status 3) when ``in_hand()`` > 0 and nothing progressed for ``timeout_s``."""

    def __init__(
        self,
        health: Health,
        in_hand: Callable[[], int],
        timeout_s: float,
        on_stall: Callable[[], None],
        *,
        check_s: float = 1.0,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.health, self.in_hand, self.timeout_s, self.on_stall = health, in_hand, timeout_s, on_stall
        self.check_s, self.exit = check_s, exit
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.health.alarm.wait(self.check_s)
            if self.stopping.is_set():
                return
            if self.health.broken is not None:
                log.error(
                    "watchdog: %s; stopping the heartbeat and exiting %d (the jobs in hand are re-queued)",
                    self.health.broken,
                    BROKEN_EXIT,
                )
                self._give_up(BROKEN_EXIT)
                return
            if self.in_hand() == 0:
                self.health.progressed()  # idle is not a stall
                continue
            idle_s = time.monotonic() - self.health.progress_at
            if idle_s > self.timeout_s:
                self.health.stalled = True
                log.error(
                    "watchdog: no progress for %.0f s with %d job(s) in hand: the pipeline is wedged; "
                    "stopping the heartbeat and exiting %d (the jobs are re-queued)",
                    idle_s,
                    self.in_hand(),
                    STALL_EXIT,
                )
                self._give_up(STALL_EXIT)
                return

    def _give_up(self, status: int) -> None:
        done = threading.Thread(target=self.on_stall, name="watchdog-death", daemon=True)
        done.start()
        done.join(timeout=5)  # Redis may be the problem: do not wait on it for long
        logging.shutdown()
        self.exit(status)

    def stop(self) -> None:
        self.stopping.set()
        self.health.alarm.set()


class Probed(Protocol):
    """What the probe server answers from: a worker's ``Health``, or the launcher's ``scrape.ChildrenPage``."""

    stalled: bool
    registry: Any

    def ready(self) -> tuple[bool, str]: ...


class ProbeServer:
    """``/healthz``, ``/readyz`` (and ``/metrics`` when ``health.registry`` is set) on ``port``."""

    def __init__(self, port: int, health: Probed) -> None:
        handler = type("Handler", (_Handler,), {"health": health})
        self.server = ThreadingHTTPServer(("0.0.0.0", port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="probes", daemon=True)
        self.thread.start()
        log.info("probes on http://0.0.0.0:%d/healthz and /readyz", self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    health: Probed

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            stalled = self.health.stalled
            self._reply(503 if stalled else 200, "stalled\n" if stalled else "ok\n")
        elif path == "/readyz":
            ok, why = self.health.ready()
            self._reply(200 if ok else 503, why + "\n")
        elif path == "/metrics" and self.health.registry is not None:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._reply(200, generate_latest(self.health.registry), CONTENT_TYPE_LATEST)
        else:
            self._reply(404, "not found\n")

    def _reply(self, status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds would flood the log
