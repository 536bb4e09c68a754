"""Run a Python module and record each thread's CPU time by name: ``python bench/threadcpu.py OUT module args...``.

Every thread reads its own CPU clock (``time.thread_time``) as it ends; threads still alive at exit are read
through their CPU clock id. OUT gets ``{"threads": {name: seconds}, "round_trips": N}`` (numbered pool
threads merged: ``decode_0``, ``decode_1`` -> ``decode``; round trips as ``bench.counted`` counts them). Only
the standard library and redis-py are imported here, so it runs any commit's worker (``PYTHONPATH`` = its
tree): started with ``runpy.run_path`` it adds nothing to ``sys.path``.
"""

from __future__ import annotations

import atexit
import json
import re
import runpy
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from redis.connection import AbstractConnection

CPU: Counter[str] = Counter()
COUNTS = {"round_trips": 0}
LOCK = threading.Lock()


def _name(thread: threading.Thread) -> str:
    return re.sub(r"[_-]\d+$", "", thread.name)


def _patch() -> None:
    inner = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def bootstrap(self: threading.Thread) -> None:
        try:
            inner(self)
        finally:
            with LOCK:
                CPU[_name(self)] += time.thread_time()

    threading.Thread._bootstrap_inner = bootstrap  # type: ignore[attr-defined]
    send = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        COUNTS["round_trips"] += 1
        return send(self, command, check_health)

    AbstractConnection.send_packed_command = counted


def _write(out: Path) -> None:
    with LOCK:
        seen = dict(CPU)
    for thread in threading.enumerate():  # still running (daemons, the main thread): read their clocks
        if thread.ident is None or not thread.is_alive():
            continue
        try:
            seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, ValueError):
            continue
        name = "main (start-up, model load)" if thread is threading.main_thread() else _name(thread)
        seen[name] = seen.get(name, 0.0) + seconds
    out.write_text(json.dumps({"threads": seen, **COUNTS}))


def main() -> None:
    out, module, *args = sys.argv[1:]
    _patch()
    atexit.register(_write, Path(out))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
