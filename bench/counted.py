"""Run a Python module with its Redis round trips counted: ``python -m bench.counted OUT module args...``.

A round trip is one ``send_packed_command`` (a pipeline is one, however many commands it holds).
The count is written to OUT as ``{"round_trips": N}`` when the process exits.
"""

from __future__ import annotations

import atexit
import json
import runpy
import sys
from pathlib import Path

from redis.connection import AbstractConnection

COUNTS = {"round_trips": 0}


def _patch() -> None:
    send = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        COUNTS["round_trips"] += 1
        return send(self, command, check_health)

    AbstractConnection.send_packed_command = counted


def main() -> None:
    out, module, *args = sys.argv[1:]
    _patch()
    atexit.register(lambda: Path(out).write_text(json.dumps(COUNTS)))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
