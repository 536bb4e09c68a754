"""The Lua scripts of the Redis store (``lua/*.lua``, package data), loaded once and called by their typed calls.

Take+start, finish, reap, give back, register, heartbeat and announce are each one atomic step. They write exactly
the keys and fields that RQ 2.6-3.0's own calls write (``Execution.create``, ``Job.prepare_for_execution``,
``Result.create``, ``FailedJobRegistry.add``, ``Job.retry``, ``Job.cleanup``, ``Execution.delete``), so
RQ's ``Job``/``Queue``/``Worker`` APIs read the same state; tests/contract/test_rq_writes.py compares them
key by key. Every script is ``lua/prelude.lua`` (the shared helpers) followed by its own file; its
arguments are one call object of ``worker.store.calls``. Scripts never fail halfway: each reads and checks
first (ids, and the type of every key it will write), then writes. A script that cannot do its work because
a key is of the wrong type writes nothing and answers ``BADTYPE`` with the keys as JSON (``WrongTypeKeys``
here); keys it can do without are named in its reply (``worker.store.misfits``).
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

import redis
from redis.exceptions import NoScriptError

from producer.wire.lua import PRODUCER_SCRIPTS
from producer.wire.lua import load as producer_lua

from .base import Misfit, WrongTypeKeys
from .calls import CALLS, wire

# Redis 7 runs scripts that declare allow-oom on a full Redis (maxmemory reached, noeviction): ours free
# at least as much as they write (a start pops the queue, a finish drops the image). Redis 6.2 knows no
# flags; there a script that has written anything may go on writing, and each of ours writes first with
# a command that a full Redis allows (LREM/LPOP, DEL, EXPIRE, ZREM, HINCRBY...), so they run there too.
ALLOW_OOM = "#!lua flags=allow-oom\n"
REFUSED = "BADTYPE "  # the error a script answers when keys it must write are of the wrong type (lua/prelude.lua)


@cache
def lua(name: str) -> str:
    """The text of ``lua/<name>.lua``, as shipped in the package."""
    return files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def source(name: str) -> str:
    """Script ``name`` as Redis runs it (without the flags line): the shared prelude, then the script."""
    return lua("prelude") + "\n" + lua(name)


class Scripts:
    """The store's scripts, loaded once; re-loaded transparently after a Redis restart (NOSCRIPT)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self.sha: dict[str, str] = {}
        self.flags: str | None = None  # the shebang line on Redis >= 7, '' before

    def load(self) -> None:
        """Load every script now (at start-up, and again after a restart wiped them), so the first batch pays no
        extra round trips; the producer's scripts too (cancel, requeue), which its user runs by ``EVALSHA`` only."""
        for call in CALLS:
            self.sha[call.script] = self._load(call.script)  # (re)loaded: after a restart the cache is empty
        for name in PRODUCER_SCRIPTS:
            self.connection.script_load(producer_lua(name)[0])

    def _load(self, name: str) -> str:
        if self.flags is None:
            version = str(self.connection.info("server").get("redis_version", "0"))
            self.flags = ALLOW_OOM if int(version.split(".")[0]) >= 7 else ""
        return self.connection.script_load(self.flags + source(name))

    def _sha(self, name: str) -> str:
        sha = self.sha.get(name)  # read once: the store's threads share the dict
        if sha is None:
            sha = self.sha[name] = self._load(name)
        return sha

    def call(self, call: Any) -> Any:
        """Run ``call``'s script with its ``KEYS`` and ``ARGV`` (one round trip; two after a restart wiped the
        script cache). ``WrongTypeKeys`` when it refused, having written nothing."""
        keys, argv = wire(call)
        try:
            try:
                return self.connection.evalsha(self._sha(call.script), len(keys), *keys, *argv)
            except NoScriptError:  # a restart (or SCRIPT FLUSH) wiped them all: load them all again
                self.load()
                return self.connection.evalsha(self._sha(call.script), len(keys), *keys, *argv)
        except redis.ResponseError as exc:
            message = str(exc)
            if not message.startswith(REFUSED):
                raise
            found = [Misfit(*triple) for triple in json.loads(message[len(REFUSED) :])]
            raise WrongTypeKeys(call.script, found) from exc
