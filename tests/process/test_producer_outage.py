"""The producer against a Redis that goes away: ``result()`` answers ``JobTimeout`` (not a raw redis error) once
its time is up; its clients carry a socket timeout (a silent server answers with an error, not never)."""

from __future__ import annotations

import time

import pytest

from bench.devserver import RedisServer
from producer import JobOptions, JobTimeout, Producer
from producer.connections import SOCKET_TIMEOUT_S


def test_result_with_redis_gone_answers_job_timeout_on_time():
    server = RedisServer().start()
    try:
        producer = Producer(server.url)
        (job_id,) = producer.enqueue_many([b"x"])
        server.process.terminate()
        server.process.wait(10)
        started = time.monotonic()
        with pytest.raises(JobTimeout, match="Redis unavailable"):
            producer.result(job_id, timeout=1.0)
        assert time.monotonic() - started < 5  # retried until the deadline, then answered
    finally:
        server.stop()


def test_clients_carry_a_socket_timeout_a_url_can_change():
    plain = Producer("redis://127.0.0.1:1/0").connection.connection_pool.connection_kwargs
    assert plain["socket_timeout"] == SOCKET_TIMEOUT_S and plain["socket_connect_timeout"] > 0
    own = Producer("redis://127.0.0.1:1/0?socket_timeout=90").connection.connection_pool.connection_kwargs
    assert own["socket_timeout"] == 90


def test_a_wait_for_replicas_must_end_before_the_socket_timeout():
    with pytest.raises(ValueError, match="wait_timeout_ms"):
        JobOptions(wait_replicas=1, wait_timeout_ms=0)  # Redis's "for ever"
    with pytest.raises(ValueError, match="wait_timeout_ms"):
        JobOptions(wait_replicas=1, wait_timeout_ms=int(SOCKET_TIMEOUT_S * 1000))
    assert JobOptions(wait_timeout_ms=0).wait_replicas == 0  # no WAIT sent: any value
