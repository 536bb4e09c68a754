"""The worker's Redis connections: a plain URL, or a Sentinel-managed primary found through redis-py's ``Sentinel``.

A failover is a connection error to us: the store's call fails with ``StoreUnavailable``, the stage
backs off and calls again, and redis-py's Sentinel pool asks the sentinels for the (new) primary on
the next connection. Scripts are re-loaded there on ``NOSCRIPT`` (``worker.store.scripts``), and the
heartbeat registers again if the worker's key is missing.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.connection import Encoder, PythonRespSerializer
from redis.sentinel import Sentinel

from producer.wire.packer import fast_packer
from producer.wire.readonly import drop_on_readonly
from producer.wire.urls import is_sentinel, parse_sentinel

# commands packed by hiredis in C where it can (a FINISH has 13 arguments per job); redis-py's packer otherwise
_PACKER = fast_packer(PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode).pack)


def store_timeouts(idle_wait_ms: float) -> dict[str, Any]:
    """The store's socket options, explicit (not a client library's default): a partitioned or silent Redis fails
    a call within the socket timeout, above the longest blocking take (``--idle-wait-ms``), so the stage backs
    off and tries again rather than hanging until the watchdog's stall timeout; keepalive finds dead peers."""
    return {
        "socket_timeout": max(5.0, idle_wait_ms / 1000 + 5.0),
        "socket_connect_timeout": 5.0,
        "socket_keepalive": True,
    }


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://``); ``options`` are
    redis-py connection options (timeouts, ``health_check_interval``)."""
    if _PACKER is not None:
        options = {"command_packer": _PACKER, **options}
    if url.startswith("unix://"):  # TCP's options: a unix socket's connection refuses them
        options = {k: v for k, v in options.items() if k not in ("socket_keepalive", "socket_keepalive_options")}
    if not is_sentinel(url):
        # a READONLY reply (a primary demoted behind the address) drops the connection
        return drop_on_readonly(redis.Redis.from_url(url, **options), redis.ReadOnlyError)
    spec = parse_sentinel(url)
    sentinel_options = {  # asking a sentinel is quick: its own short timeouts, whatever the primary's are
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "username": spec.sentinel_username,
        "password": spec.sentinel_password,
        "ssl": spec.sentinel_tls,
    }
    sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs=sentinel_options)
    return sentinel.master_for(
        spec.service, db=spec.db, username=spec.username, password=spec.password, ssl=spec.tls, **options
    )
