"""A results feed key of the wrong type (another client made it a list) does not crash a feed consumer: it
warns once and waits; once the key is deleted, the group is created and results flow."""

from __future__ import annotations

import logging
import threading

from producer import Producer
from producer.wire.keys import results_stream
from producer.wire.results import make_result
from producer.wire.serializer import dumps

STREAM = results_stream("classify")


def test_a_feed_that_is_not_a_stream_is_waited_out_with_one_warning(redis_url, conn, caplog):
    conn.rpush(STREAM, "x")  # before the group exists: XGROUP CREATE ... MKSTREAM answers WRONGTYPE
    feed = Producer(redis_url).results("web", start="0")  # raised WRONGTYPE before
    assert feed.get(timeout_s=0.5) is None
    result = make_result("j1", model="m@1", worker="w1", timings_ms={}, meta={"ad": 1}, topk=[("a", 1.0)])
    fix = threading.Timer(
        0.5, lambda: (conn.delete(STREAM), conn.xadd(STREAM, {"job_id": "j1", "result": dumps(result)}))
    )
    fix.start()
    got = feed.get(timeout_s=10)
    fix.join()
    assert got is not None and got["job_id"] == "j1" and got["meta"] == {"ad": 1}
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "is not a stream" in said[0] and STREAM in said[0]
