"""Keys of the wrong type as the worker reports them (a log line per key at most once a minute, a count per
key pattern for the metric, the recent keys for ``producer status``), and ids escaped in log lines."""

from __future__ import annotations

import logging

from prometheus_client import generate_latest

from worker.heartbeat import Heartbeat
from worker.metrics import Metrics
from worker.progress import InHand, Stats
from worker.store import WorkerStats, shown
from worker.store.base import Misfit, WrongTypeKeys
from worker.store.memory import MemoryBroker, MemoryStore
from worker.store.misfits import MisfitReport, pattern_of, role_of
from worker.store.rqcalls import QueueCalls, Setting

CALLS = QueueCalls.build(Setting("classify", "w1", 20, 3, 5.0, 100, 0))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ids_and_keys_are_shown_escaped_in_log_lines():
    assert shown("plain-id_1") == "plain-id_1" and shown("café") == "café"
    assert shown("a\nERROR forged") == "a\\nERROR forged" and shown("x\r\x1b[31m") == "x\\r\\x1b[31m"
    assert shown("back\\nslash") == "back\\\\nslash"  # a literal backslash-n is not a newline's escape
    assert shown("l\u2028s") == "l\\u2028s" and shown(b"\xff\xfe-x") == "\\xff\\xfe-x" and shown(None) == ""


def test_keys_named_after_an_id_are_counted_under_their_pattern_and_get_their_role():
    assert pattern_of("rq:wip:classify") == "rq:wip:classify"
    assert pattern_of("rq:results:any\nid") == "rq:results:*" and pattern_of("rq:execution:j:e") == "rq:execution:*"
    assert pattern_of("rq:executions:j") == "rq:executions:*"
    assert role_of(CALLS.take, "rq:wip:classify") == "wip" and role_of(CALLS.finish, "rq:failed:classify") == "failed"
    assert role_of(CALLS.take, "rq:results:j") == "results" and role_of(CALLS.take, "elsewhere") == "other"


def test_each_key_is_logged_at_most_once_a_minute_and_always_counted(caplog):
    clock = Clock()
    report = MisfitReport(clock=clock)
    wip = Misfit("rq:wip:classify", "hash", "zset")
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            report.report(CALLS.take, [wip], refused=True)
            clock.now += 10
        report.report(CALLS.take, [Misfit("rq:results:a\nb", "hash", "stream")])
        clock.now += 31
        report.report(CALLS.take, [wip], refused=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "TAKE refused, nothing written" in lines[0] and "no job can start" in lines[0]
    assert "rq:results:a\\nb (results) is a hash, not a stream" in lines[1] and "\n" not in lines[1]
    assert "(2 more time(s) since the last report)" in lines[2]
    assert report.counts == {"rq:wip:classify": 4, "rq:results:*": 1}
    assert report.recent(30) == ["rq:wip:classify"] and set(report.recent(120)) == {wip.key, "rq:results:a\nb"}


def test_a_refusal_says_which_keys_and_is_a_store_outage_to_its_caller():
    exc = WrongTypeKeys("take", [Misfit("rq:wip:classify", "hash", "zset")])
    assert str(exc) == "take refused, nothing written: rq:wip:classify is a hash, not a zset"


class MisfitStore(MemoryStore):
    """The in-memory store, reporting keys of the wrong type as the Redis store does."""

    def __init__(self) -> None:
        super().__init__(MemoryBroker(), "w1")
        self.counts: dict[str, int] = {}

    def wrong_type_counts(self) -> dict[str, int]:
        return dict(self.counts)


def test_the_heartbeat_adds_what_the_store_found_since_its_last_beat_to_the_metric():
    store, metrics = MisfitStore(), Metrics("cpu")
    heartbeat = Heartbeat(store, InHand(), Stats(), ttl_s=60.0, metrics=metrics)
    store.counts = {"rq:wip:classify": 3}
    heartbeat.beat()
    store.counts = {"rq:wip:classify": 5, "rq:results:*": 1}
    heartbeat.beat()
    heartbeat.beat()
    text = generate_latest(metrics.registry).decode()
    assert 'adclassify_wrong_type_keys_total{key="rq:wip:classify"} 5.0' in text
    assert 'adclassify_wrong_type_keys_total{key="rq:results:*"} 1.0' in text
    assert store.heartbeat(WorkerStats()) == 0
