"""A feed consumer whose group is gone (a Redis restarted without data, a flush) creates it again from the stream's
start, not at its end: the results workers fed meanwhile are delivered, none is lost."""

from __future__ import annotations

from producer import Producer
from producer.wire.keys import results_stream
from producer.wire.results import make_result
from producer.wire.serializer import dumps

STREAM = results_stream("classify")


def feed_one(conn, job_id: str) -> None:
    result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 1.0)])
    conn.xadd(STREAM, {"job_id": job_id, "result": dumps(result)})


def test_results_fed_after_the_group_was_lost_are_delivered(redis_url, conn):
    feed = Producer(redis_url).results("web")  # from the stream's end, as by default
    assert feed.get(timeout_s=0.2) is None  # the group exists now
    feed_one(conn, "j1")
    assert feed.get(timeout_s=5)["job_id"] == "j1"
    conn.delete(STREAM)  # Redis restarted empty: the stream and its group are gone
    feed_one(conn, "j2")  # a worker's result, before the consumer's next read
    feed_one(conn, "j3")
    got = [feed.get(timeout_s=5), feed.get(timeout_s=5)]
    assert [r["job_id"] for r in got if r] == ["j2", "j3"]


def test_a_consumer_that_delivered_nothing_yet_reads_the_new_stream_from_its_start(redis_url, conn):
    feed = Producer(redis_url).results("web")
    assert feed.get(timeout_s=0.2) is None
    conn.delete(STREAM)
    feed_one(conn, "j4")
    got = feed.get(timeout_s=5)
    assert got is not None and got["job_id"] == "j4"
