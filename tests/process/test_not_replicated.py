"""``wait_replicas``: an enqueue retried after ``NotReplicated`` (as the error and RELIABILITY.md advise) waits
for the replicas again; it must not answer success because the job exists on the primary."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from bench.devserver import RedisServer
from producer import JobOptions, NotReplicated, Producer, ShardUnavailable

from ..conftest import image_bytes, wait_for


@pytest.fixture
def primary() -> Iterator[RedisServer]:
    server = RedisServer(extra_args=["--repl-diskless-sync-delay", "0"]).start()
    yield server
    server.stop()


def test_a_retry_after_not_replicated_waits_for_the_replicas_again(primary):
    producer = Producer(primary.url, options=JobOptions(wait_replicas=1, wait_timeout_ms=200))
    photo = image_bytes("cat.jpg")
    for _ in range(2):  # the first write, then the advised retry: no replica has either
        with pytest.raises(NotReplicated) as raised:
            producer.enqueue(photo, job_id="ad-17")
        assert raised.value.job_ids == ["ad-17"] and raised.value.acked == 0
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    try:
        link = redis.Redis.from_url(replica.url)
        assert wait_for(lambda: link.info("replication")["master_link_status"] == "up", 30)
        patient = Producer(primary.url, options=JobOptions(wait_replicas=1, wait_timeout_ms=10_000))  # a busy box
        assert patient.enqueue(photo, job_id="ad-17") == "ad-17"  # now acknowledged by the replica
        assert link.exists("rq:job:ad-17") and link.llen("rq:queue:classify") == 1  # one job, not two
    finally:
        replica.stop()


def test_a_connection_lost_while_waiting_for_the_replicas_leaves_every_id_not_enqueued(primary):
    producer = Producer(primary.url, options=JobOptions(wait_replicas=1, wait_timeout_ms=20_000))
    admin = redis.Redis.from_url(primary.url)

    def waiting() -> list[int]:
        return [c["id"] for c in admin.client_list() if c.get("cmd") == "wait"]

    killer = threading.Thread(target=lambda: admin.client_kill_filter(_id=wait_for(waiting, 30)[0]))
    killer.start()
    with pytest.raises(ShardUnavailable) as raised:  # written, but the WAIT's connection was cut
        producer.enqueue_many([image_bytes("cat.jpg")], job_ids=["ad-9"])
    killer.join(30)
    assert admin.exists("rq:job:ad-9") and raised.value.not_enqueued == ["ad-9"]  # on no replica: not done
