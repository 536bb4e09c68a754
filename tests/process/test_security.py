"""Redis ACLs: a producer that may only enqueue and read results, a worker without admin commands."""

from __future__ import annotations

import pytest
import redis

from producer import CancelOutcome, Producer
from producer.feed import group_lags
from producer.wire.keys import results_stream
from producer.wire.results import make_result
from producer.wire.serializer import dumps

from ..acls import PRODUCER_ACL_62, drop_users, major_version, set_users
from ..conftest import image_bytes, wait_for_workers

pytestmark = pytest.mark.both_redis  # ACLs and stream replies differ between 6.2 and 7

STREAM = results_stream("classify")


@pytest.fixture
def acl_users(redis_url, conn):
    """The producer and worker users of docs/security.md, as this server's version takes them."""
    yield set_users(conn, redis_url)
    drop_users(conn)


def test_least_privilege_users_run_the_whole_path(acl_users, conn, start_worker):
    producer_url, worker_url = acl_users
    start_worker("--redis-url", worker_url)
    wait_for_workers(conn)
    producer = Producer(producer_url)
    feed = producer.results(group="web")  # creates the group (XGROUP CREATE ... MKSTREAM)
    job_id = producer.enqueue(image_bytes("cat.jpg"))
    assert producer.result(job_id, timeout=60)["ok"]
    assert feed.get(timeout_s=30)["job_id"] == job_id  # the worker appended it to the feed
    feed.ack()
    assert group_lags(producer.connection, "classify") in ({"web": 0}, {"web": None})  # None: Redis 6.2
    assert "cached" not in producer.classify(image_bytes("cat.jpg"), timeout=60, cache=True)  # a miss: asks
    assert producer.classify(image_bytes("cat.jpg"), timeout=60, cache=True)["cached"]  # read-only lookup
    assert producer.enqueue(image_bytes("cat.jpg"), job_id="ad-1") == "ad-1"  # create-if-absent (WATCH)
    assert producer.result("ad-1", timeout=60)["ok"]
    with producer.subscribe() as sub:
        job_id = producer.enqueue(image_bytes("coffee.jpg"))
        assert sub.get(timeout=60)["job_id"] == job_id
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.connection.flushall()
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.connection.delete("rq:queue:classify")
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis.Redis.from_url(worker_url).flushall()


def test_the_producer_user_reads_and_claims_on_the_feed_and_cannot_destroy_it(acl_users, conn):
    producer_url, _ = acl_users
    conn.xgroup_create(STREAM, "web", id="0", mkstream=True)
    for job_id in ("left", "next"):
        result = make_result(job_id, model="tiny@7", worker="test", timings_ms={}, meta={})
        conn.xadd(STREAM, {"job_id": job_id, "result": dumps(result)})
    conn.xreadgroup("web", "dead", {STREAM: ">"}, count=1)  # "left" pending on a dead consumer
    producer = Producer(producer_url)
    feed = producer.results(group="web", claim_idle_s=0)  # XAUTOCLAIM, XREADGROUP, XACK
    assert sorted([feed.get(timeout_s=10)["job_id"], feed.get(timeout_s=10)["job_id"]]) == ["left", "next"]
    feed.ack()
    assert conn.xpending(STREAM, "web")["pending"] == 0
    assert "web" in group_lags(producer.connection, "classify")  # XINFO GROUPS
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.connection.xgroup_destroy(STREAM, "web")
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.connection.xtrim(STREAM, maxlen=0)


# Every key the worker's scripts (and RQ) write, with the type written there; per-job keys for job "j".
WRITTEN = {
    "rq:queue:classify": "list",
    "rq:queue:classify:intermediate": "list",
    "rq:wip:classify": "zset",
    "rq:finished:classify": "zset",
    "rq:failed:classify": "zset",
    "rq:canceled:classify": "zset",
    "rq:queues": "set",
    "rq:workers": "set",
    "rq:workers:classify": "set",
    "rq:worker:w1": "hash",
    "classify:results:stream": "stream",
    "rq:job:j": "hash",
    "rq:job:j:dependents": "set",
    "rq:job::j:dependencies": "set",
    "rq:results:j": "stream",
    "rq:executions:j": "zset",
    "rq:execution:j:e1": "hash",
    "rq:adclassify:model:classify": "string",
    "rq:adclassify:cache:x": "string",
    "rq:adclassify:seen:j": "string",
}
CREATE = {  # a command that creates a key of each type
    "hash": ("HSET", "{}", "f", "v"),
    "list": ("RPUSH", "{}", "x"),
    "set": ("SADD", "{}", "x"),
    "zset": ("ZADD", "{}", 1, "x"),
    "stream": ("XGROUP", "CREATE", "{}", "g", "$", "MKSTREAM"),
    "string": ("SET", "{}", "x"),
}


def wrong_types_made(producer: redis.Redis, admin: redis.Redis) -> list[tuple[str, str]]:
    """Every ``(key, type)`` the producer user could create where another type belongs (each undone)."""
    made = []
    for key, wanted in WRITTEN.items():
        for kind, command in CREATE.items():
            if kind == wanted:
                continue
            try:
                producer.execute_command(*(key if arg == "{}" else arg for arg in command))
            except redis.exceptions.NoPermissionError:
                continue
            made.append((key, kind))
            admin.delete(key)
    return made


def test_on_redis_7_the_producer_user_can_create_no_key_of_the_wrong_type(acl_users, conn):
    if major_version(conn) < 7:
        pytest.skip("Redis 6.2 has no selectors: its ACL grants every command on every key (the next test)")
    made = wrong_types_made(redis.Redis.from_url(acl_users[0]), conn)
    # HSET on ~rq:job:* (the job hash) also reaches a job's dependents and dependencies keys, which the
    # scripts only expire or delete (any type will do); ZADD on ~rq:execution:* comes with cancel's rules,
    # and TAKE checks that key too (its execution id is not even known before the take)
    harmless = {("rq:job:j:dependents", "hash"), ("rq:job::j:dependencies", "hash"), ("rq:execution:j:e1", "zset")}
    assert set(made) <= harmless


def test_with_the_redis_62_acl_the_producer_user_can_create_keys_of_the_wrong_type(redis_url, conn):
    producer_url, _ = set_users(conn, redis_url, PRODUCER_ACL_62)
    try:
        made = wrong_types_made(redis.Redis.from_url(producer_url), conn)
    finally:
        drop_users(conn)
    # the workers' defence on 6.2 is theirs alone: tests/contract/test_wrong_types.py
    for case in [("rq:wip:classify", "hash"), ("rq:queue:classify", "hash"), ("classify:results:stream", "list")]:
        assert case in made
    assert ("rq:results:j", "hash") in made
    # the finished registry and execution records are out of its reach now (cancel is a script)
    assert not [key for key, _ in made if key.startswith(("rq:finished", "rq:execution:"))]
    assert not [key for key, _ in made if key.startswith(("rq:worker", "rq:adclassify:seen"))]  # out of reach


def _certs(folder) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    )
    return str(folder / "ca.pem"), str(folder / "srv.pem"), str(folder / "srv.key")


def test_tls_rediss_url_for_worker_and_producer(tmp_path, tiny_model_path):
    import shutil
    import signal
    import subprocess
    import sys

    from bench.devserver import RedisServer, RedisServerError, find_redis_server, free_port

    from ..conftest import ROOT

    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make test certificates")
    ca, cert, key = _certs(tmp_path)
    tls_port = free_port()
    tls = [
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        key,
        "--tls-ca-cert-file",
        ca,
        "--tls-auth-clients",
        "no",
    ]
    try:
        server = RedisServer(binary=find_redis_server(False), extra_args=tls).start()
    except RedisServerError as exc:
        pytest.skip(f"this redis-server has no TLS: {exc}")
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "--model", str(tiny_model_path), "--redis-url", url], cwd=ROOT
    )
    try:
        assert Producer(url).classify(image_bytes("cat.jpg"), timeout=60)["ok"]
        plain = redis.Redis.from_url(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required")
        with pytest.raises(redis.ConnectionError):  # an unknown CA is refused: the certificate is checked
            plain.ping()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        server.stop()


def test_the_producer_user_can_cancel_queued_and_running_jobs_and_leaves_finished_ones(acl_users, conn):
    producer_url, _ = acl_users
    producer = Producer(producer_url)
    queued, done = producer.enqueue_many([image_bytes("cat.jpg")] * 2)
    conn.lrem("rq:queue:classify", 1, done)  # as if a worker had finished it
    conn.hset(f"rq:job:{done}", "status", "finished")
    conn.zadd("rq:finished:classify", {done: 1e12})
    running = producer.enqueue_many([image_bytes("cat.jpg")])[0]
    conn.lrem("rq:queue:classify", 1, running)
    conn.lpush("rq:queue:classify", running)  # at the head: the worker's take starts it first
    from worker.store.rq import RedisStore

    store = RedisStore(conn, "classify", "w1")
    store.register()
    assert [j.job_id for j in store.take(1, 1.0)] == [running]
    assert producer.cancel(queued) is CancelOutcome.CANCELED
    assert producer.cancel(running) is CancelOutcome.CANCELING
    assert producer.cancel(done) is CancelOutcome.ALREADY_FINAL  # a finished job is left as it was
    for job_id in (queued, running):
        assert conn.hget(f"rq:job:{job_id}", "status") == b"canceled"
    assert conn.hget(f"rq:job:{done}", "status") == b"finished" and conn.zcard("rq:finished:classify") == 1
    assert conn.llen("rq:queue:classify") == 0
    assert conn.zcard("rq:canceled:classify") == 2 and conn.zcard("rq:wip:classify") == 0


def test_the_producer_user_can_cancel_a_long_running_job_whose_executions_record_expired(acl_users, conn):
    # cancel then finds the job's entries in the started registry by their prefix (ZRANGE on rq:wip:classify)
    producer_url, _ = acl_users
    producer = Producer(producer_url)
    running = producer.enqueue_many([image_bytes("cat.jpg")])[0]
    from worker.store.rq import RedisStore

    store = RedisStore(conn, "classify", "w1")
    store.register()
    assert [j.job_id for j in store.take(1, 1.0)] == [running]
    assert conn.delete(f"rq:executions:{running}") == 1  # its TTL ran out while it ran
    assert producer.cancel(running) is CancelOutcome.CANCELING
    assert conn.hget(f"rq:job:{running}", "status") == b"canceled" and conn.zcard("rq:wip:classify") == 0


# What KEDA's redis scalers run for a trigger's listName (their script, as documented in KEDA's source: TYPE,
# then the length command of that type), here to check the ACL of docs/security.md against it
KEDA_LENGTH = """
local key = KEYS[1]
local kind = redis.call('type', key).ok
local length = {zset = 'zcard', set = 'scard', list = 'llen', hash = 'hlen', none = 'llen'}
return redis.call(length[kind], key)
"""


def test_kedas_user_reads_the_queue_and_the_jobs_in_flight_and_nothing_else(redis_url, conn):
    from rq import Queue

    from ..acls import KEDA_ACL, rules

    conn.execute_command("ACL", "SETUSER", "keda", "reset", *rules(KEDA_ACL))
    try:
        queued, running = Producer(redis_url).enqueue_many([image_bytes("cat.jpg")] * 2)
        from worker.store.rq import RedisStore

        store = RedisStore(conn, "classify", "w1")
        store.register()
        assert [j.job_id for j in store.take(1, 1.0)] == [queued]
        conn.rpush("rq:queue:classify:intermediate", "moved-id")
        keda = redis.Redis.from_url(redis_url.replace("redis://", "redis://keda:keda-secret@"))
        assert keda.ping()
        lengths = {key: keda.eval(KEDA_LENGTH, 1, key) for key in (
            "rq:queue:classify", "rq:wip:classify", "rq:queue:classify:intermediate")}  # fmt: skip
        assert lengths == {"rq:queue:classify": 1, "rq:wip:classify": 1, "rq:queue:classify:intermediate": 1}
        with pytest.raises(redis.ResponseError):
            keda.eval(KEDA_LENGTH, 1, f"rq:job:{running}")  # no other key
        with pytest.raises(redis.ResponseError):
            keda.delete("rq:queue:classify")
        assert Queue("classify", connection=conn).count == 1
    finally:
        conn.acl_deluser("keda")


def test_a_producer_acl_from_before_cancel_expired_jobs_refuses_a_cancel_whole_not_half(redis_url, conn):
    # the script reads first and writes EXPIRE first: a user without it (an older ACL) writes nothing at all
    from ..acls import producer_acl

    older = producer_acl(conn).replace(" +expire", "")
    producer_url, _ = set_users(conn, redis_url, producer=older)
    try:
        from worker.store.rq import RedisStore

        RedisStore(conn, "classify", "w1").register()  # loads the cancel script (the producer user may not EVAL)
        producer = Producer(producer_url)
        (queued,) = producer.enqueue_many([image_bytes("cat.jpg")])
        with pytest.raises(redis.ResponseError):
            producer.cancel(queued)
        assert conn.hget(f"rq:job:{queued}", "status") == b"queued" and conn.ttl(f"rq:job:{queued}") == -1
        assert conn.lrange("rq:queue:classify", 0, -1) == [queued.encode()]
        assert conn.zcard("rq:canceled:classify") == 0
    finally:
        drop_users(conn)


def test_the_producer_user_runs_no_lua_of_its_own_and_cancels_with_the_script_workers_load(acl_users, conn):
    from producer.errors import ScriptNotLoaded

    producer_url, _ = acl_users
    producer = Producer(producer_url)
    (queued,) = producer.enqueue_many([image_bytes("cat.jpg")])
    with pytest.raises(redis.exceptions.NoPermissionError):  # any Lua: `while true do end` after a write
        producer.shards[0].connection.eval("return redis.call('TYPE', KEYS[1])", 1, f"rq:job:{queued}")
    conn.script_flush()  # a Redis that no worker has registered with since it started
    with pytest.raises(ScriptNotLoaded, match="start one"):
        producer.cancel(queued)
    assert conn.hget(f"rq:job:{queued}", "status") == b"queued"  # nothing written
    from worker.store.rq import RedisStore

    RedisStore(conn, "classify", "w1").register()  # a worker registering loads the producer's scripts too
    assert producer.cancel(queued) is CancelOutcome.CANCELED
