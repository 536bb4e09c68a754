"""One worker process: its logging, its signal handlers, and the run until a signal stops it."""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading

from .config import WorkerSettings
from .signals import SignalThread

log = logging.getLogger("worker")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(settings: WorkerSettings) -> None:
    """Log to stderr as text or JSON lines (``--log-json``), at ``--log-level``; once per process."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])


def serve_one(settings: WorkerSettings) -> int:
    """Run one worker in this process until a signal stops it."""
    setup_logging(settings)
    stop = threading.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal %s: exiting at once", signum)
            os._exit(1)
        log.info("signal %s: finishing the batch in hand, then exiting", signum)
        stop.set()

    reload_requests = threading.Event()  # SIGHUP: load --model again in the background (worker.reload)
    actions = {signal.SIGTERM: on_signal, signal.SIGINT: on_signal, signal.SIGHUP: lambda _: reload_requests.set()}
    SignalThread(actions).install()  # acted on off the main thread: worker.signals says why
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by the launcher until now
    from .health import BROKEN_EXIT
    from .model import ModelError
    from .pipeline import ShutdownIncomplete, StageFailed
    from .service import RedisRefused, run  # torch loads here, after argument errors had their chance
    from .store.names import NameTaken

    try:
        run(settings, stop, reload_requests)
    except ShutdownIncomplete as exc:
        log.error("exiting 1: %s", exc)
        return 1
    except StageFailed as exc:
        log.error("exiting %d: %s", BROKEN_EXIT, exc)
        return BROKEN_EXIT
    except (NameTaken, ModelError, RedisRefused) as exc:
        log.error("exiting 2: %s", exc)
        return 2
    return 0


def exit_now(code: int) -> None:
    """Run the exit handlers (log and trace flushes), then end the process without tearing torch down: an
    AOTInductor package's runner holds C++ threads whose destructors abort the process (SIGABRT, "terminate
    called without an active exception") when the interpreter finalizes after a clean stop, and so did a thread
    still running then (a model reload in progress). A launcher's children end this way too (``spawn`` children
    finalize like any interpreter)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
