"""``python -m tests.crashing_worker MARKER <worker flags>``: a worker that dies at once on an image holding MARKER.

Like a decoder that segfaults on one photo: the poison-job tests need a job that kills its worker
every time. The crash is injected here, in the tests; the worker package has no such hook.
"""

from __future__ import annotations

import os
import sys

from worker import __main__ as cli
from worker.decode import pool


def main() -> int:
    marker, args = sys.argv[1].encode(), sys.argv[2:]
    original = pool.decode

    def crashing(data: bytes, *rest: object) -> bytes:
        if marker in data:
            os._exit(86)
        return original(data, *rest)

    pool.decode = crashing
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
