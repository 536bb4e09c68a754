"""An outage of the queue store (a failover, a restart) is one warning however many threads and retries
fail, and one line when a call succeeds again."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

from worker.outage import Outage, ReapAfterOutage
from worker.pipeline import Pipeline, PipelineSettings
from worker.store.memory import MemoryBroker, MemoryStore

from ..conftest import wait_for


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_many_failures_from_many_threads_are_one_warning_and_the_recovery_one_more(caplog):
    caplog.set_level(logging.DEBUG, logger="worker.store")
    outage = Outage()
    outage.answered(time.monotonic())  # no outage: nothing to say
    threads = [
        threading.Thread(target=lambda w=what: [outage.failed(w, ConnectionError("gone")) for _ in range(5)])
        for what in ("take", "finish", "heartbeat")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    in_flight = time.monotonic() - 60  # a reply to a call made before the outage began: not a recovery
    outage.answered(in_flight)
    outage.answered(time.monotonic())
    outage.answered(time.monotonic())
    said = warnings(caplog)
    assert len(said) == 2 and said[0].startswith("redis unavailable (") and "gone" in said[0]
    assert said[1].startswith("redis answers again after") and "(15 failed call(s) retried)" in said[1]
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 14  # the retries, at debug level


def test_a_second_outage_is_reported_again(caplog):
    outage = Outage()
    for _ in range(2):
        outage.failed("take", ConnectionError("down"))
        outage.answered(time.monotonic())
    assert [m.split(" (")[0].split(" after")[0] for m in warnings(caplog)] == [
        "redis unavailable",
        "redis answers again",
    ] * 2


def test_the_reaper_waits_while_beats_fail_and_a_ttl_after_and_a_worker_process_a_ttl_from_its_start():
    gate = ReapAfterOutage(0.2)
    assert gate.allows()  # a store on its own (tools, tests): reaps at once
    gate.failed()
    assert not gate.allows()  # a shard whose beat failed is not reaped while it is down, however long ago
    gate.reap_from = 0.0
    assert not gate.allows()
    gate.answered()
    assert not gate.allows()  # the others get a TTL to beat again
    assert wait_for(gate.allows, timeout_s=5)
    started = ReapAfterOutage(0.2, closed=True)  # a worker process may start just after an outage
    assert not started.allows() and wait_for(started.allows, timeout_s=5)


def test_a_finisher_backing_off_tries_again_as_soon_as_another_threads_call_is_answered():
    broker = MemoryBroker()
    decoder, model = SimpleNamespace(backend="cpu"), SimpleNamespace(cap=4)  # the pause uses neither
    pipeline = Pipeline(MemoryStore(broker, "w1"), decoder, model, PipelineSettings("w1"), threading.Event())
    outage = pipeline.stats.outage
    outage.failed("finish", ConnectionError("gone"))
    waited: list[float] = []
    pause = threading.Thread(
        target=lambda: (start := time.monotonic(), pipeline._pause(30.0), waited.append(time.monotonic() - start))
    )
    pause.start()
    pause.join(0.5)
    assert pause.is_alive() and not waited  # backing off while Redis is down
    outage.answered(time.monotonic())  # the heartbeat's call, say: Redis is back
    assert wait_for(lambda: bool(waited), timeout_s=5) and waited[0] < 5  # not the 30 s of its back-off
    outage.failed("finish", ConnectionError("gone"))
    waited.clear()
    pause = threading.Thread(target=lambda: (pipeline._pause(30.0), waited.append(0.0)))
    pause.start()
    pipeline.stop.set()  # a stop cuts it short too
    assert wait_for(lambda: bool(waited), timeout_s=5)
