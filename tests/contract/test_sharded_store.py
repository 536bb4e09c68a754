"""The sharded store on 3 real servers: takes are fair across shards (none starves), an idle take
wakes on whichever shard gets a job first, and each job is finished on its own shard."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import redis

from bench.devserver import RedisServer
from producer import Producer
from producer.wire.results import make_result
from worker.redisconn import connect as worker_connect
from worker.store import Outcome, PartlyRecorded, StoreUnavailable
from worker.store.rq import RedisStore
from worker.store.sharded import ShardedStore

from ..conftest import wait_for


@pytest.fixture
def three():
    servers = [RedisServer().start() for _ in range(3)]
    stores = [RedisStore(redis.Redis.from_url(s.url), "classify", "w1") for s in servers]
    store = ShardedStore(stores, block_s=1.0)
    store.register()
    yield servers, store
    store.unregister()
    for server in servers:
        server.stop()


def test_takes_rotate_over_shards_so_none_starves(three):
    servers, store = three
    Producer(servers[0].url).enqueue_many([b"x"] * 100)
    Producer(servers[1].url).enqueue_many([b"y"] * 5)
    Producer(servers[2].url).enqueue_many([b"z"] * 5)
    seen = [{store.shard_of(job) for job in store.take(8, 0.0)} for _ in range(3)]
    assert {0, 1, 2} <= set().union(*seen)  # within three takes every shard was served
    assert all(len(s) >= 1 for s in seen)


def test_an_idle_take_wakes_on_the_first_shard_to_get_a_job(three):
    servers, store = three
    later = threading.Timer(0.3, lambda: Producer(servers[2].url).enqueue_many([b"late"]))
    later.start()
    start = time.monotonic()
    jobs = store.take(8, 5.0)
    waited = time.monotonic() - start
    assert [store.shard_of(j) for j in jobs] == [2] and waited < 1.5  # not the 5 s timeout, nor a poll of each shard


def test_each_job_is_finished_on_its_own_shard(three):
    servers, store = three
    for server in servers:
        Producer(server.url).enqueue_many([b"img"] * 2)
    jobs = store.take(6, 0.0)
    assert sorted(store.shard_of(j) for j in jobs) == [0, 0, 1, 1, 2, 2]
    store.finish(
        [
            Outcome(j, make_result(j.job_id, model="m", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)]))
            for j in jobs
        ]
    )
    for server in servers:
        conn = redis.Redis.from_url(server.url)
        assert conn.zcard("rq:finished:classify") == 2 and conn.zcard("rq:wip:classify") == 0


def test_an_id_moved_on_one_shard_is_started_there(three):
    servers, store = three
    (job_id,) = Producer(servers[1].url).enqueue_many([b"img"])
    conn = redis.Redis.from_url(servers[1].url)
    moved = conn.lmove("rq:queue:classify", "rq:queue:classify:intermediate", "LEFT", "RIGHT")
    (job,) = store.start_moved([moved], 4)
    assert job.job_id == job_id and store.shard_of(job) == 1
    assert conn.llen("rq:queue:classify:intermediate") == 0 and conn.zcard("rq:wip:classify") == 1


def test_a_silent_shard_costs_one_timeout_per_back_off_not_one_per_take_and_all_silent_fails_the_take():
    servers = [RedisServer().start() for _ in range(3)]
    stores = [
        RedisStore(worker_connect(s.url, socket_timeout=0.3, socket_connect_timeout=0.3), "classify", "w1")
        for s in servers
    ]
    store = ShardedStore(stores, block_s=0.2)
    try:
        store.register()
        for server in (servers[0], servers[2]):
            Producer(server.url).enqueue_many([b"x"] * 40)
        servers[1].process.send_signal(signal.SIGSTOP)  # up, but silent: connections open, nothing answers
        started = time.monotonic()
        taken = [store.take(4, 0.0) for _ in range(8)]
        assert time.monotonic() - started < 1.2  # one 0.3 s timeout, not eight
        assert all(jobs for jobs in taken) and {store.shard_of(j) for jobs in taken for j in jobs} == {0, 2}
        assert all(len(jobs) <= 4 for jobs in taken)
        for server in (servers[0], servers[2]):
            server.process.send_signal(signal.SIGSTOP)
        with pytest.raises(StoreUnavailable):  # every shard silent: the pipeline's take backs off
            while True:
                store.take(4, 0.0)  # (jobs the waiters moved may still come first)
        for server in servers:
            server.process.send_signal(signal.SIGCONT)
        Producer(servers[1].url).enqueue_many([b"y"] * 4)
        assert wait_for(lambda: any(store.shard_of(j) == 1 for j in store.take(4, 0.0)), timeout_s=30)
    finally:
        for server in servers:
            server.process.send_signal(signal.SIGCONT)
        store.unregister()
        for server in servers:
            server.stop()


def test_a_finish_with_one_shard_down_records_the_others_and_says_which():
    servers = [RedisServer(extra_args=["--appendonly", "yes"]).start() for _ in range(3)]  # shard 1 comes back whole
    store = ShardedStore([RedisStore(redis.Redis.from_url(s.url), "classify", "w1") for s in servers], block_s=1.0)
    store.register()
    try:
        finish_with_shard_1_down(servers, store)
    finally:
        store.unregister()
        for server in servers:
            server.stop()


def finish_with_shard_1_down(servers: list[RedisServer], store: ShardedStore) -> None:
    for server in servers:
        Producer(server.url).enqueue_many([b"img"] * 2)
    jobs = store.take(6, 0.0)
    outcomes = [
        Outcome(j, make_result(j.job_id, model="m", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)]))
        for j in jobs
    ]
    down = [o for o in outcomes if store.shard_of(o.job) == 1]
    servers[1].process.terminate()  # a clean shutdown: its append-only file has the jobs in hand
    servers[1].process.wait(10)
    with pytest.raises(PartlyRecorded) as partly:
        store.finish(outcomes)
    servers[1].start()
    assert partly.value.recorded == {o.job.execution for o in outcomes if o not in down}
    for index in (0, 2):
        assert redis.Redis.from_url(servers[index].url).zcard("rq:finished:classify") == 2
    assert store.finish(down) == []  # the rest alone, once the shard answers: nothing skipped, nothing twice
    assert redis.Redis.from_url(servers[1].url).zcard("rq:finished:classify") == 2


def test_feed_lags_keep_their_servers_labels_when_one_is_down(three):
    servers, store = three
    for server in servers:
        redis.Redis.from_url(server.url).xgroup_create("classify:results:stream", "web", id="$", mkstream=True)
    servers[1].process.terminate()
    servers[1].process.wait(10)
    assert sorted(store.feed_lags()) == ["classify@0:web", "classify@2:web"]  # not server 2's lag under @1
