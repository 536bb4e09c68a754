"""Packing Redis commands without redis-py's per-argument Python: hiredis packs a whole command in C.

redis-py's own packer (with hiredis installed) still encodes every argument through a Python function
before handing the tuple to ``hiredis.pack_command``: an enqueue's transaction has ~50 arguments (RQ's job
hash) and a worker's FINISH 13 per job, so that loop is a good part of a call's CPU. ``hiredis.pack_command``
takes str (UTF-8), bytes, int and float itself, and refuses the rest (``TypeError``: bool, None, bytearray,
...), which then go to redis-py's packer and its rules (a ``DataError`` for bool and None, as ever).
Connections get it with ``command_packer=fast_packer(fallback)``; None when hiredis is not installed.
Nothing here imports redis (the wire contract's rule): the caller builds redis-py's packer as the fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    import hiredis
except ImportError:  # the ``fast`` extra is not installed: redis-py's packer as it is
    hiredis = None


class FastPacker:
    """A redis-py command packer (``pack(*args) -> list[bytes]``) that packs in C where it can."""

    def __init__(self, fallback: Callable[..., list[bytes]]) -> None:
        self.fallback = fallback

    def pack(self, *args: Any) -> list[bytes]:
        first = args[0]
        if (first.__class__ is str and " " in first) or (first.__class__ is bytes and b" " in first):
            return self.fallback(*args)  # "SCRIPT LOAD" and the like: redis-py splits the name
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return self.fallback(*args)


def fast_packer(fallback: Callable[..., list[bytes]]) -> FastPacker | None:
    """A ``FastPacker`` over redis-py's ``fallback`` packer, or None without hiredis."""
    return FastPacker(fallback) if hiredis is not None else None
