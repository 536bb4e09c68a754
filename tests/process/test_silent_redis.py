"""A Redis that accepts connections and never answers (a partition, a hung server): the worker's store calls fail
within their socket timeout, so its stages back off and try again, instead of hanging until the watchdog."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from worker.redisconn import connect, store_timeouts
from worker.store import StoreUnavailable
from worker.store.rq import RedisStore


def test_a_silent_redis_fails_the_store_call_within_the_socket_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    port = listener.getsockname()[1]
    options = store_timeouts(idle_wait_ms=0.0)
    store = RedisStore(connect(f"redis://127.0.0.1:{port}/0", **options), "classify", "w1")
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable):
            store.take(1, 0.0)
        assert time.monotonic() - started < options["socket_timeout"] * 3 + 2  # redis-py retries a few times
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def test_the_socket_timeout_stays_above_the_longest_blocking_take():
    assert store_timeouts(1000.0)["socket_timeout"] == 6.0 and store_timeouts(30_000.0)["socket_timeout"] == 35.0


def test_the_store_options_work_over_a_unix_socket(tmp_path):
    from bench.devserver import RedisServer

    path = tmp_path / "redis.sock"
    server = RedisServer(extra_args=["--unixsocket", str(path), "--unixsocketperm", "700"]).start()
    try:
        conn = connect(f"unix://{path}", health_check_interval=30, **store_timeouts(1000.0))
        assert conn.ping()
        store = RedisStore(conn, "classify", "w1")
        store.register()
        assert store.take(1, 0.0) == []
    finally:
        server.stop()
