"""A plain URL's connections that let go of a demoted primary (both sides' clients use it).

Behind a plain ``redis://`` address that moves on failover (a DNS name or a virtual IP, not Sentinel), a pooled
connection opened before the failover stays on the old primary, now a replica: every write answers
``READONLY`` and, as the connection itself is healthy (a ``PING`` answers), redis-py keeps using it until the
server closes it. redis-py's Sentinel connections disconnect on ``READONLY``; these do the same before their
next command, so it connects to whatever the address names now. The error is raised as it is (the caller
retries it). Written against redis-py's connection classes, passed in: the wire imports no client library.
"""

from __future__ import annotations

from functools import cache
from typing import Any


def drop_on_readonly(client: Any, readonly_error: type[Exception]) -> Any:
    """``client`` (a ``redis.Redis`` or ``redis.asyncio.Redis`` on a plain URL), its pool's connections dropped
    after a ``readonly_error``."""
    pool = client.connection_pool
    dropping = _dropping_async if pool.connection_class.__module__.startswith("redis.asyncio") else _dropping
    pool.connection_class = dropping(pool.connection_class, readonly_error)
    return client


@cache
def _dropping(base: type, readonly_error: type[Exception]) -> type:
    class DropsOnReadOnly(base):  # type: ignore[valid-type, misc]
        demoted = False

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().read_response(*args, **kwargs)
            except readonly_error:
                # a demoted primary: dropped before this connection's next command, not now (a transaction's
                # other replies are still to be read; a drop mid-transaction would read as a WatchError)
                self.demoted = True
                raise

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if self.demoted:
                self.demoted = False
                self.disconnect()  # the next call connects to whatever the address names now
            super().send_packed_command(command, check_health)

    DropsOnReadOnly.__name__ = f"DropsOnReadOnly{base.__name__}"
    return DropsOnReadOnly


@cache
def _dropping_async(base: type, readonly_error: type[Exception]) -> type:
    class DropsOnReadOnly(base):  # type: ignore[valid-type, misc]
        demoted = False

        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().read_response(*args, **kwargs)
            except readonly_error:
                self.demoted = True  # as the synchronous class: dropped before its next command
                raise

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if self.demoted:
                self.demoted = False
                await self.disconnect()
            await super().send_packed_command(command, check_health)

    DropsOnReadOnly.__name__ = f"DropsOnReadOnly{base.__name__}"
    return DropsOnReadOnly
