"""The Lua scripts of the Redis store: take+start, finish, reap and give back, each one atomic step.

They write exactly the keys and fields that RQ 2.6-3.0's own calls write (``Execution.create``,
``Job.prepare_for_execution``, ``Result.create``, ``FailedJobRegistry.add``, ``Job.retry``,
``Job.cleanup``, ``Execution.delete``), so RQ's ``Job``/``Queue``/``Worker`` APIs read the same
state; tests/contract/test_rq_writes.py compares them key by key. Key prefixes come in as
arguments from ``producer.rqkeys``. Scripts never fail halfway on a job: every job is checked
before anything about it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from .lua_jobs import FINISH, TAKE
from .lua_workers import GIVE_BACK, HEARTBEAT, REAP, REGISTER

SOURCES = {"take": TAKE, "finish": FINISH, "reap": REAP, "give_back": GIVE_BACK, "register": REGISTER,
           "heartbeat": HEARTBEAT}  # fmt: skip
# Redis 7 runs scripts that declare allow-oom on a full Redis (maxmemory reached, noeviction): ours free
# at least as much as they write (a start pops the queue, a finish drops the image). Redis 6.2 knows no
# flags; there a script that has written anything may go on writing, and each of ours writes first with
# a command that a full Redis allows (LREM/LPOP, DEL, EXPIRE, ZREM, HINCRBY...), so they run there too.
ALLOW_OOM = "#!lua flags=allow-oom\n"


class Scripts:
    """The store's scripts, loaded once; re-loaded transparently after a Redis restart (NOSCRIPT)."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self.sha: dict[str, str] = {}
        self.flags: str | None = None  # the shebang line on Redis >= 7, '' before

    def load(self) -> None:
        """Load every script now (at start-up), so the first batch pays no extra round trips."""
        for name in SOURCES:
            self._sha(name)

    def _sha(self, name: str) -> str:
        if self.flags is None:
            version = str(self.connection.info("server").get("redis_version", "0"))
            self.flags = ALLOW_OOM if int(version.split(".")[0]) >= 7 else ""
        if name not in self.sha:
            self.sha[name] = self.connection.script_load(self.flags + SOURCES[name])
        return self.sha[name]

    def call(self, name: str, args: Sequence[Any]) -> Any:
        """Run script ``name`` with ``args`` (one round trip; two after a restart wiped the script cache)."""
        try:
            return self.connection.evalsha(self._sha(name), 0, *args)
        except NoScriptError:
            self.sha.pop(name, None)
            return self.connection.evalsha(self._sha(name), 0, *args)
