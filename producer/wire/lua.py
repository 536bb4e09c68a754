"""The producer's Lua scripts (``producer/lua/*.lua``), as text and SHA-1 (standard library only).

The producer runs them with ``EVALSHA``; workers ``SCRIPT LOAD`` them with their own (``worker.store.scripts``),
so a producer user needs no ``EVAL``, which would let it run any Lua (docs/security.md).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files

PRODUCER_SCRIPTS = ("cancel", "requeue")


@cache
def load(name: str) -> tuple[str, str]:
    """Script ``name``'s text, as shipped in the package, and its SHA-1 (what ``EVALSHA`` names)."""
    text = files("producer").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return text, hashlib.sha1(text.encode()).hexdigest()
