"""Keys of the wrong type written with a web backend's credentials (the producer user of docs/security.md for
Redis 6.2, which may run each of its commands on each of its keys): every key that user can write, created
with every other type it can create, while jobs flow through the store. No job is lost: each stays where it
was (queued, or started under its worker) until the key is deleted, or is recorded without an optional
write; then every job ends once, with one result and one announcement. The key is reported meanwhile."""

from __future__ import annotations

import contextlib

import pytest
import redis

import worker.store.rq as rq_store
from producer import Producer
from producer.status import gather
from producer.wire.results import make_result
from producer.wire.serializer import loads
from worker.store import Outcome, WorkerStats, WrongTypeKeys
from worker.store.misfits import pattern_of
from worker.store.rq import RedisStore

from ..acls import PRODUCER_ACL_62, drop_users, set_users

QUEUE, WIP, INTERMEDIATE = "rq:queue:classify", "rq:wip:classify", "rq:queue:classify:intermediate"
IDS = ("j-ok", "j-fail", "j-retry", "j-victim")  # a success, a deterministic failure, a retry; the victim's keys
BASE = "b" * 28  # the first take's execution ids are BASE + 0001..0004 (uuid4 is fixed below)

FIXED = {  # the queue's keys the producer user may write, with the type RQ gives them
    "rq:queues": "set",
    "classify:results:stream": "stream",
    WIP: "zset",
    "rq:failed:classify": "zset",  # requeue's lines (on 6.2 every command of the user reaches it)
    "rq:canceled:classify": "zset",
}
# the producer user lost every write on these (cancel is one script now): it cannot create them at all
OUT_OF_REACH = ("rq:finished:classify", f"rq:execution:j-victim:{BASE}0004")
PER_JOB = {  # the victim's own keys (its hash itself: not a hash means no job, answered job_gone)
    "rq:results:j-victim": "stream",
    "rq:executions:j-victim": "zset",
    "rq:job:j-victim:dependents": "set",
    "rq:job::j-victim:dependencies": "set",
}
CREATE = {  # what the producer user can create, by type
    "hash": ("HSET", "f", "v"),
    "list": ("RPUSH", "x"),
    "set": ("SADD", "x"),
    "zset": ("ZADD", 1, "x"),
    "stream": ("XGROUP", "CREATE", "{}", "g", "$", "MKSTREAM"),
}
CASES = [(key, kind) for key, wanted in {**FIXED, **PER_JOB}.items() for kind in CREATE if kind != wanted]
# the keys the scripts write with a type of their own (the others they only expire or delete, or never touch)
CHECKED = {*FIXED, *PER_JOB} - {"rq:canceled:classify", "rq:job:j-victim:dependents", "rq:job::j-victim:dependencies"}


def create(client: redis.Redis, key: str, kind: str) -> None:
    """``key`` as a ``kind``, written by ``client``."""
    command = CREATE[kind]
    if "{}" in command:
        client.execute_command(*(key if arg == "{}" else arg for arg in command))
    else:
        client.execute_command(command[0], key, *command[1:])


@pytest.fixture
def producer_url(redis_url, conn):
    url, _ = set_users(conn, redis_url, PRODUCER_ACL_62)
    yield url
    drop_users(conn)


@pytest.fixture
def store(conn, monkeypatch) -> RedisStore:
    monkeypatch.setattr(rq_store, "uuid4", lambda: type("U", (), {"hex": "b" * 32})())
    s = RedisStore(conn, "classify", "w1")
    s.register()
    return s


def outcome(job) -> Outcome:
    """j-fail fails for good, j-retry fails retryably on its first run; the rest succeed."""
    if job.job_id == "j-fail":
        error = {"type": "unsupported_image", "message": "not an image"}
        return Outcome(job, make_result(job.job_id, model="m@1", worker="w1", timings_ms={}, meta={}, error=error))
    if job.job_id == "j-retry" and job.retries_left == 2:
        error = {"type": "model_error", "message": "try again"}
        result = make_result(job.job_id, model="m@1", worker="w1", timings_ms={}, meta={}, error=error)
        return Outcome(job, result, retry=True)
    return succeeded(job)


def succeeded(job) -> Outcome:
    return Outcome(job, make_result(job.job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)]))


def work(store: RedisStore) -> None:
    """What a worker does in a few seconds: take, finish, reap, give back what it does not hold, beat. A call
    refused for a key of the wrong type is retried in the next round (the pipeline backs off)."""
    with contextlib.suppress(WrongTypeKeys):
        jobs = store.take(8, 0.01)
        if jobs:
            store.finish([outcome(job) for job in jobs])
    for call in (store.reap, lambda: store.give_back(set(), min_age_s=0.0), lambda: store.heartbeat(WorkerStats())):
        with contextlib.suppress(WrongTypeKeys):
            call()


def places(conn, job_id: str) -> set[str]:
    """Where a job is: queued, moved, started, ended (a final status and a result); empty when lost."""
    found, key = set(), job_id.encode()
    if conn.type(QUEUE) in (b"list", b"none") and key in conn.lrange(QUEUE, 0, -1):
        found.add("queued")
    if key in conn.lrange(INTERMEDIATE, 0, -1):
        found.add("moved")
    if conn.type(WIP) == b"zset" and any(m.startswith(key + b":") for m in conn.zrange(WIP, 0, -1)):
        found.add("started")
    results = f"rq:results:{job_id}"
    ended = conn.hget(f"rq:job:{job_id}", "status") in (b"finished", b"failed")
    if ended and conn.type(results) == b"stream" and conn.xlen(results):
        found.add("ended")
    return found


def results_of(conn, job_id: str) -> list[bytes]:
    """The types of the entries of the job's RQ result stream (b"1" success, b"2" failure)."""
    return [fields[b"type"] for _, fields in conn.xrange(f"rq:results:{job_id}")]


@pytest.mark.parametrize("key", OUT_OF_REACH)
def test_the_producer_user_cannot_create_the_registries_it_no_longer_writes(producer_url, key):
    client = redis.Redis.from_url(producer_url)
    for kind in CREATE:
        with pytest.raises(redis.exceptions.NoPermissionError):
            create(client, key, kind)


@pytest.mark.parametrize(("key", "kind"), CASES, ids=[f"{k}={t}" for k, t in CASES])
def test_a_key_of_the_wrong_type_written_by_the_producer_user_costs_no_job(producer_url, conn, store, key, kind):
    announced = conn.pubsub()
    announced.subscribe("classify:results")
    create(redis.Redis.from_url(producer_url), key, kind)
    with contextlib.suppress(redis.ResponseError):  # rq:queues of another type: RQ's SADD in the MULTI fails,
        Producer(producer_url).enqueue_many([b"img"] * 4, job_ids=list(IDS))  # the job and its RPUSH are kept
    assert all(places(conn, job_id) == {"queued"} for job_id in IDS)
    for _ in range(3):
        work(store)
        for job_id in IDS:
            where = places(conn, job_id)
            assert where, f"{job_id} lost"
            if "queued" in where:  # nothing of a start was written for it
                assert conn.hget(f"rq:job:{job_id}", "status") == b"queued"
    if key in CHECKED:  # reported: a count for the metric, and producer status shows it
        assert store.wrong_type_counts().get(pattern_of(key), 0) > 0
        status = gather(conn, "classify")
        listed = status["wrong_type_keys"] if key in FIXED else status["workers"][0]["wrong_type_keys"]
        assert key in listed
    assert conn.type(key).decode() == kind  # the scripts never delete or convert it

    conn.delete(key)  # the operator deletes it
    for _ in range(12):
        work(store)
        if all(places(conn, job_id) == {"ended"} for job_id in IDS):
            break
    assert {job_id: places(conn, job_id) for job_id in IDS} == {job_id: {"ended"} for job_id in IDS}
    assert conn.hget("rq:job:j-fail", "status") == b"failed" and results_of(conn, "j-fail") == [b"2"]
    for job_id in ("j-ok", "j-retry", "j-victim"):
        assert conn.hget(f"rq:job:{job_id}", "status") == b"finished" and results_of(conn, job_id) == [b"1"]
    assert conn.zrange("rq:failed:classify", 0, -1) == [b"j-fail"]
    if key != "rq:finished:classify":  # else the jobs that finished meanwhile have no entry there (documented)
        assert sorted(conn.zrange("rq:finished:classify", 0, -1)) == [b"j-ok", b"j-retry", b"j-victim"]
    assert conn.llen(QUEUE) == conn.llen(INTERMEDIATE) == conn.zcard(WIP) == 0
    published = []
    while (message := announced.get_message(timeout=0.2)) is not None:  # the first: the subscription
        if message["type"] == "message":
            published.append(loads(message["data"])["job_id"])
    assert sorted(published) == sorted(IDS)  # each announced once


@pytest.mark.parametrize("kind", [k for k in CREATE if k != "list"])
def test_a_queue_of_the_wrong_type_refuses_enqueues_and_takes_and_loses_no_started_job(
    producer_url, redis_url, conn, store, kind
):
    producer = Producer(producer_url)
    ok_id, retry_id = producer.enqueue_many([b"img"] * 2, job_ids=["j-ok", "j-retry"])
    jobs = store.take(2, 0.05)  # both started: the queue is empty again
    create(redis.Redis.from_url(producer_url), QUEUE, kind)
    store.finish([outcome(job) for job in jobs])  # the success is recorded; the retry cannot be queued: held
    assert places(conn, ok_id) == {"ended"} and places(conn, retry_id) == {"started"}
    with pytest.raises(redis.ResponseError):
        producer.enqueue(b"img")  # refused (the web backend sees it)
    for call in (lambda: store.take(8, 0.05), store.reap, lambda: store.give_back(set(), min_age_s=0.0)):
        with pytest.raises(WrongTypeKeys, match=f"{QUEUE} is a {kind}, not a list"):
            call()
    assert places(conn, retry_id) == {"started"}
    assert store.heartbeat(WorkerStats()) == 0  # the backlog is unknown: no job can be queued
    assert conn.hget("rq:worker:w1", "birth") and conn.ttl("rq:worker:w1") > 0  # still registered, alive
    status = gather(conn, "classify")
    assert status["wrong_type_keys"] == {QUEUE: {"found": kind, "wanted": "list"}} and status["queued"] is None
    assert len(status["workers"]) == 1

    conn.delete(QUEUE)
    assert store.give_back(set(), min_age_s=0.0) == [retry_id]
    (again,) = store.take(8, 0.05)
    assert again.retries_left == 2  # its retry was never recorded: it runs as it would have
    store.finish([succeeded(again)])
    assert places(conn, retry_id) == {"ended"} and results_of(conn, retry_id) == [b"1"]
    assert Producer(redis_url).enqueue(b"img") and [j.job_id for j in store.take(8, 0.05)]


def test_a_take_refused_for_a_started_registry_of_the_wrong_type_writes_nothing(producer_url, conn, store):
    ids = Producer(producer_url).enqueue_many([b"img"] * 3)
    redis.Redis.from_url(producer_url).hset(WIP, "x", "y")  # the HSET rq:wip:classify x y
    conn.lmove(QUEUE, INTERMEDIATE)  # one moved by a blocking wait, as a worker's take does
    before = {k: conn.dump(k) for k in conn.keys("*")}
    with pytest.raises(WrongTypeKeys, match="rq:wip:classify is a hash, not a zset"):
        store.start_moved([ids[0].encode()], 8)
    assert {k: conn.dump(k) for k in conn.keys("*")} == before  # not one key written
    assert store.wrong_type_counts() == {WIP: 1}
