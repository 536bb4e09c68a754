"""The durable results feed through consumer groups: at least once, across consumers that die, on Redis 7
and 6.2; ``listen --group`` and ``status`` on the command line."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import msgpack
import pytest
import redis

from producer import Producer
from producer.aio import AsyncProducer
from producer.wire.keys import results_stream
from producer.wire.results import make_result
from producer.wire.serializer import dumps

from ..conftest import ROOT, image_bytes, wait_for, wait_for_workers

pytestmark = pytest.mark.both_redis  # stream replies (XAUTOCLAIM, XINFO) differ between 6.2 and 7


STREAM = results_stream("classify")


def add_results(conn: redis.Redis, job_ids: list[str], meta: dict | None = None) -> dict[str, str]:
    """Append results to the feed as a worker's finish does; entry id by job id."""
    added = {}
    for job_id in job_ids:
        result = make_result(job_id, model="tiny@7", worker="test", timings_ms={}, meta=meta or {"n": job_id})
        added[job_id] = conn.xadd(STREAM, {"job_id": job_id, "result": dumps(result)}).decode()
    return added


def pending(conn: redis.Redis, group: str = "web") -> dict[str, str]:
    """The group's unacknowledged entries: consumer by entry id."""
    rows = conn.xpending_range(STREAM, group, "-", "+", 1000)
    return {row["message_id"].decode(): row["consumer"].decode() for row in rows}


def collect(feed, count: int, timeout_s: float = 30.0) -> list[str]:
    """The job ids of the next ``count`` results (fails the test if they do not come in time)."""
    deadline, seen = time.monotonic() + timeout_s, []
    while len(seen) < count:
        result = feed.get(timeout_s=max(0.0, deadline - time.monotonic()))
        assert result is not None, f"only {len(seen)} of {count} results came within {timeout_s} s: {seen}"
        seen.append(result["job_id"])
    return seen


VICTIM = """
import sys
from producer import Producer

feed = Producer(sys.argv[1]).results(group="web", consumer="victim", start="0")
for n, result in enumerate(feed, start=1):
    print(result["job_id"], flush=True)
    if n == int(sys.argv[2]):
        sys.stdin.read()  # holds this result, and the rest of its read, unacknowledged until killed
"""


def test_a_consumer_killed_mid_stream_loses_nothing(redis_url, conn):
    job_ids = [f"job-{i}" for i in range(30)]
    entries = add_results(conn, job_ids)
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, redis_url, "5"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        printed = [victim.stdout.readline().strip() for _ in range(5)]
        left = pending(conn)
        assert printed == job_ids[:5] and set(left.values()) == {"victim"}
        assert entries["job-4"] in left and entries["job-3"] not in left  # the one in hand, not those before
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    rescuer = Producer(redis_url).results(group="web", consumer="rescuer", claim_idle_s=0.2)
    rescued = collect(rescuer, len(job_ids) - 4)  # all but the four the victim acknowledged
    rescuer.ack()
    assert set(printed[:4]) | set(rescued) == set(job_ids)
    assert {job for job, entry in entries.items() if entry in left} <= set(rescued)
    assert pending(conn) == {}


def test_a_consumer_killed_while_a_worker_publishes_loses_no_result(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    producer.results(group="web", start="$")  # the group exists before the first result
    start_worker("--batch-size", "4")
    wait_for_workers(conn)
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, redis_url, "3"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    job_ids = producer.enqueue_many([image_bytes("cat.jpg")] * 20 + [b"not an image"] * 4)
    try:
        printed = [victim.stdout.readline().strip() for _ in range(3)]
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
    left = set(pending(conn))
    assert left and set(printed) <= set(job_ids)
    rescuer = producer.results(group="web", consumer="rescuer", claim_idle_s=0.2)
    rescued = collect(rescuer, len(job_ids) - 2)  # all but the two the victim acknowledged
    rescuer.ack()
    assert set(printed[:2]) | set(rescued) == set(job_ids) and pending(conn) == {}


def test_an_entry_is_acknowledged_only_when_the_next_one_is_asked_for(redis_url, conn):
    entries = add_results(conn, ["a", "b", "c"])
    feed = Producer(redis_url).results(group="web", consumer="c1", start="0")
    assert next(feed)["job_id"] == "a" and entries["a"] in pending(conn)
    assert next(feed)["job_id"] == "b"
    assert entries["a"] not in pending(conn) and entries["b"] in pending(conn)
    del feed  # the consumer stops (or dies) holding "b"
    again = Producer(redis_url).results(group="web", consumer="c1")  # the same name after a restart
    assert collect(again, 2) == ["b", "c"]
    again.ack()
    assert pending(conn) == {}


def test_a_new_group_starts_at_new_results_with_dollar_and_at_the_oldest_with_zero(redis_url, conn):
    add_results(conn, ["old-1", "old-2"])
    producer = Producer(redis_url)
    fresh_only, everything = producer.results(group="new", start="$"), producer.results(group="all", start="0")
    add_results(conn, ["fresh"])
    assert collect(fresh_only, 1) == ["fresh"] and collect(everything, 3) == ["old-1", "old-2", "fresh"]
    # an existing group keeps its position whatever start says
    assert producer.results(group="new", consumer="late", start="0").get(timeout_s=0.3) is None


def test_deleted_and_malformed_entries_are_acknowledged_and_skipped(redis_url, conn):
    conn.xgroup_create(STREAM, "web", id="0", mkstream=True)
    (gone,) = add_results(conn, ["gone"]).values()
    conn.xreadgroup("web", "dead", {STREAM: ">"})  # a consumer that died holding it
    conn.xdel(STREAM, gone)  # ... and the entry is trimmed away meanwhile
    add_results(conn, ["a"])
    conn.xadd(STREAM, {"job_id": "junk", "result": b"\xc1 not msgpack"})
    conn.xadd(STREAM, {"job_id": "partial"})
    conn.xadd(STREAM, {"job_id": "nonresult", "result": dumps({"job_id": "nonresult"})})
    add_results(conn, ["b"])
    feed = Producer(redis_url).results(group="web", consumer="live", claim_idle_s=0)
    assert collect(feed, 2) == ["a", "b"]
    feed.ack()
    assert pending(conn) == {}


def test_a_group_deleted_under_a_reader_is_created_again(redis_url, conn):
    feed = Producer(redis_url).results(group="web")
    conn.delete(STREAM)
    assert feed.get(timeout_s=0.3) is None
    wait_for(lambda: conn.exists(STREAM), 5)
    add_results(conn, ["after"])
    assert collect(feed, 1) == ["after"]


def test_the_async_feed_acknowledges_on_next_and_claims_what_others_left(redis_url, conn):
    entries = add_results(conn, ["a", "b"])
    conn.xgroup_create(STREAM, "web", id="0")
    conn.xreadgroup("web", "dead", {STREAM: ">"}, count=1)  # "a" left pending by a dead consumer

    async def run() -> list[str]:
        producer = AsyncProducer(redis_url)
        feed = await producer.results(group="web", consumer="async", claim_idle_s=0.2).open()
        first = (await feed.__anext__())["job_id"]
        assert pending(conn)[entries[first]] == "async"
        second = (await feed.get(timeout_s=10))["job_id"]
        assert entries[first] not in pending(conn) and pending(conn)[entries[second]] == "async"
        await feed.ack()
        await producer.close()
        return [first, second]

    assert sorted(asyncio.run(run())) == ["a", "b"]
    assert pending(conn) == {}


def producer_cli(redis_url: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "producer", "--redis-url", redis_url, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def test_listen_json_prints_bytes_ext_and_timestamps_in_meta_and_acknowledges_what_it_printed(redis_url, conn):
    meta = {"raw": b"\x00\xff", "ext": msgpack.ExtType(7, b"\x01"), "at": msgpack.Timestamp(1_700_000_000, 0)}
    add_results(conn, ["odd-meta", "next"], meta=meta)
    out = producer_cli(redis_url, "listen", "--group", "cli", "--start", "0", "--json", "--count", "1")
    assert out.returncode == 0, out.stderr
    assert "reading classify:results:stream as" in out.stderr
    (line,) = out.stdout.splitlines()
    printed = json.loads(line)
    assert printed["job_id"] == "odd-meta"
    assert printed["meta"] == {
        "raw": {"$bytes": "AP8="},
        "ext": {"$ext": 7, "data": "AQ=="},
        "at": "2023-11-14T22:13:20Z",
    }
    assert pending(conn, "cli") != {}  # "next" was read with it and stays pending until a consumer takes it
    assert all(entry_consumer.count(":") == 1 for entry_consumer in pending(conn, "cli").values())  # host:pid
    out = producer_cli(redis_url, "listen", "--group", "cli", "--claim-idle-s", "0", "--count", "1")
    assert out.returncode == 0 and out.stdout.split()[0] == "next", out.stderr
    assert pending(conn, "cli") == {}


def test_status_shows_each_groups_lag_and_the_feed_length(redis_url, conn):
    add_results(conn, [f"job-{i}" for i in range(5)])
    feed = Producer(redis_url).results(group="web", start="0")
    collect(feed, 2)
    data = json.loads(producer_cli(redis_url, "status", "--json").stdout)["feed"]
    (group,) = data["groups"]
    assert data["stream"] == STREAM and data["length"] == 5 and "maxlen" in data["cap"]
    # one result acknowledged; one in hand and three read ahead are pending
    assert group["name"] == "web" and group["consumers"] == 1 and group["pending"] == 4
    text = producer_cli(redis_url, "status").stdout
    if group["reports_lag"]:  # Redis 7: entries the group has yet to read
        assert group["lag"] == 0 and "group web: lag 0, 4 pending" in text
        add_results(conn, ["job-5", "job-6"])
        assert json.loads(producer_cli(redis_url, "status", "--json").stdout)["feed"]["groups"][0]["lag"] == 2
    else:  # Redis 6.2 reports no lag
        assert group["lag"] is None and "group web: lag unknown (Redis < 7" in text
    assert "results feed classify:results:stream: 5 entries" in text
