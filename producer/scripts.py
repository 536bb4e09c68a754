"""The producer's own Lua scripts (``producer/lua/*.lua``): loading, the call's wire shape, one run.

Each script's arguments are one frozen dataclass (a ``ScriptCall``) whose field order is the wire order:
fields made with ``key_field()`` travel in ``KEYS``, the others in ``ARGV`` (the script's header names the
same fields, in the same order).
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any

from redis.exceptions import NoPermissionError, NoScriptError

from .errors import ScriptNotLoaded
from .ops import Procedure, call
from .wire.lua import load


def key_field() -> Any:
    """A field of a script call that travels in ``KEYS``."""
    return field(metadata={"keys": True})


class ScriptCall:
    """A mixin for a script's frozen call dataclass: ``wire()`` gives its ``KEYS`` and ``ARGV``."""

    def wire(self) -> tuple[list[str], list[str]]:
        """``KEYS`` and ``ARGV``, in the fields' order."""
        out: dict[bool, list[str]] = {True: [], False: []}
        for f in fields(self):  # type: ignore[arg-type]
            out[bool(f.metadata.get("keys"))].append(getattr(self, f.name))
        return out[True], out[False]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def run(shard: int, name: str, script_call: ScriptCall) -> Procedure[tuple[str, str]]:
    """One run of script ``name`` on ``shard``: ``EVALSHA`` of the copy workers load; when the server has none
    (no worker has registered since it started), ``EVAL``, for a user allowed to run any Lua, else
    ``ScriptNotLoaded``. Its ``(outcome, detail)``."""
    text, sha = load(name)
    keys_, argv = script_call.wire()
    try:
        reply = yield call(shard, "EVALSHA", sha, len(keys_), *keys_, *argv)
    except NoScriptError:
        try:
            reply = yield call(shard, "EVAL", text, len(keys_), *keys_, *argv)
        except NoPermissionError as exc:
            if "'eval'" not in str(exc):  # a command inside the script that this user may not run: that error
                raise
            raise ScriptNotLoaded(name, str(exc)) from exc
    return _text(reply[0]), _text(reply[1])
