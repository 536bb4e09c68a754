"""Redis ACLs: a producer that may only enqueue and read results, a worker without admin commands."""

from __future__ import annotations

import pytest
import redis

from producer import Producer

from .conftest import image_bytes, wait_for_workers

# Keep in step with docs/security.md.
PRODUCER_ACL = ("on >producer-secret resetkeys ~rq:job:* ~rq:queue:classify ~rq:queues ~rq:results:* "
                "resetchannels &classify:results -@all +ping +hset +hget +hgetall +rpush +sadd +exists +llen "
                "+xread +xrevrange +multi +exec +subscribe +unsubscribe")  # fmt: skip
WORKER_ACL = ("on >worker-secret resetkeys ~rq:* resetchannels &classify:results "
              "+@all -@admin -@dangerous +info +client|setname +script|load")  # fmt: skip


@pytest.fixture
def acl_users(redis_url, conn):
    conn.acl_setuser("producer", reset=True)
    conn.execute_command("ACL", "SETUSER", "producer", *PRODUCER_ACL.split())
    conn.execute_command("ACL", "SETUSER", "worker", "reset", *WORKER_ACL.split())
    base = redis_url.removeprefix("redis://")
    yield f"redis://producer:producer-secret@{base}", f"redis://worker:worker-secret@{base}"
    conn.acl_deluser("producer", "worker")


def test_least_privilege_users_run_the_whole_path(acl_users, conn, start_worker):
    producer_url, worker_url = acl_users
    start_worker("--redis-url", worker_url)
    wait_for_workers(conn)
    producer = Producer(producer_url)
    assert producer.classify(image_bytes("cat.jpg"), timeout=60)["ok"]
    with producer.subscribe() as sub:
        job_id = producer.enqueue(image_bytes("coffee.jpg"))
        assert sub.get(timeout=60)["job_id"] == job_id
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.connection.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.connection.delete("rq:queue:classify")
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis.Redis.from_url(worker_url).flushall()
