"""The producer's Redis clients: a plain URL, or a Sentinel-managed primary found through redis-py's ``Sentinel``.

A failover is a connection error to the caller of that moment (``ShardUnavailable`` from an enqueue,
retried by ``result()``'s wait); the next command asks the sentinels for the new primary. The URL
forms are ``producer.wire.urls``'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.connection import Encoder, PythonRespSerializer
from redis.sentinel import Sentinel

from .wire.packer import fast_packer
from .wire.readonly import drop_on_readonly
from .wire.urls import SentinelURL, is_sentinel, parse_sentinel

# commands packed by hiredis in C where it can (producer.wire.packer); redis-py's own packer for the rest
_PACKER = fast_packer(PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode).pack)
_FAST = {"command_packer": _PACKER} if _PACKER is not None else {}
# a dead or silent server answers a call with an error within this, not never; above every block and WAIT the
# producer sends (result reads 1 s; group cursors and WAIT at most MAX_WAIT_MS); a URL's own settings win
# (``?socket_timeout=60``)
SOCKET_TIMEOUT_S, CONNECT_TIMEOUT_S = 30.0, 5.0
MAX_WAIT_MS = 20_000
_TIMEOUTS = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}


def _sentinel_options(spec: SentinelURL) -> dict[str, Any]:
    return {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "username": spec.sentinel_username,
        "password": spec.sentinel_password,
        "ssl": spec.sentinel_tls,
    }


def connect(url: str) -> redis.Redis:
    """A client for ``url``: ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://``."""
    if not is_sentinel(url):
        # a READONLY reply (a primary demoted behind the address) drops the connection
        return drop_on_readonly(redis.Redis.from_url(url, **_TIMEOUTS, **_FAST), redis.ReadOnlyError)
    spec = parse_sentinel(url)
    sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs=_sentinel_options(spec))
    login = {"username": spec.username, "password": spec.password, "ssl": spec.tls}
    return sentinel.master_for(spec.service, db=spec.db, **login, **_TIMEOUTS, **_FAST)


def connect_async(url: str) -> aioredis.Redis:
    """The asyncio twin of ``connect``."""
    if not is_sentinel(url):
        return drop_on_readonly(aioredis.Redis.from_url(url, **_TIMEOUTS), redis.ReadOnlyError)
    spec = parse_sentinel(url)
    sentinel = AsyncSentinel(list(spec.sentinels), sentinel_kwargs=_sentinel_options(spec))
    login = {"username": spec.username, "password": spec.password, "ssl": spec.tls}
    return sentinel.master_for(spec.service, db=spec.db, **login, **_TIMEOUTS)


def _sentinel_clients(client: Any) -> list[Any]:
    """The clients of the sentinels a Sentinel-managed client asks (none for a plain URL's)."""
    pool = getattr(client, "connection_pool", None)
    manager = getattr(pool, "sentinel_manager", None) or getattr(getattr(pool, "proxy", None), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", None) or [])


def close_sentinels_sync(shards: Sequence[Any]) -> None:
    """Close the connections to the sentinels of every Sentinel-managed shard (``Producer.close``)."""
    for shard in shards:
        for sentinel in _sentinel_clients(shard.connection):
            with contextlib.suppress(redis.RedisError, OSError):
                sentinel.close()


async def close_sentinels(shards: Sequence[Any]) -> None:
    """The asyncio twin of ``close_sentinels_sync``."""
    for shard in shards:
        for sentinel in _sentinel_clients(shard.connection):
            with contextlib.suppress(redis.RedisError, OSError):
                await sentinel.aclose()
