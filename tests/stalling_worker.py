"""``python -m tests.stalling_worker MARKER <worker flags>``: a worker whose decode never returns on an image
holding MARKER (a wedged decoder), for the watchdog tests. Injected here; the worker has no such hook."""

from __future__ import annotations

import sys
import threading

from worker import __main__ as cli
from worker.decode import pool


def main() -> int:
    marker, args = sys.argv[1].encode(), sys.argv[2:]
    original = pool.decode

    def stalling(data: bytes, *rest: object) -> bytes:
        if marker in data:
            threading.Event().wait()  # forever
        return original(data, *rest)

    pool.decode = stalling
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
