"""An outage of the queue store (a failover, a restart) is one warning however many threads and retries
fail, and one line when a call succeeds again."""

from __future__ import annotations

import logging
import threading
import time

from worker.config import WorkerSettings
from worker.outage import Outage, ReapAfterOutage
from worker.pipeline import Pipeline, PipelineSettings
from worker.progress import pipeline_settings_for
from worker.store import StoreUnavailable
from worker.store.memory import MemoryBroker, MemoryStore

from .test_pipeline import PassThrough, Recorder, fill


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
    gate = ReapAfterOutage(60.0)
    assert gate.allows()  # a store on its own (tools, tests): reaps at once
    gate.failed()
    assert not gate.allows()  # a shard whose beat failed is not reaped while it is down, however long ago
    gate.reap_from = 0.0
    assert not gate.allows()
    gate.answered()
    assert not gate.allows() and gate.reap_from > time.monotonic() + 50  # the others get a TTL to beat again
    gate.reap_from = time.monotonic()
    assert gate.allows()
    started = ReapAfterOutage(60.0, closed=True)  # a worker process may start just after an outage
    assert not started.allows() and started.reap_from > time.monotonic() + 50


def test_a_finisher_backing_off_through_a_long_outage_tries_again_within_a_quarter_ttl():
    for ttl_s, cap_s in ((20, 5.0), (2, 0.5), (600, 30.0)):
        settings = WorkerSettings(model="m.pt", worker_ttl_s=ttl_s)
        assert pipeline_settings_for(settings).finish_backoff_max_s == cap_s
    broker = MemoryBroker()
    ids = fill(broker, [b"x"] * 4)
    back_at: list[float] = []

    class Outage(MemoryStore):  # every finish refused for 4 s: the back-off grows to its cap meanwhile
        def finish(self, outcomes):
            if time.monotonic() < started + 4.0:
                raise StoreUnavailable("connection refused")
            back_at.append(time.monotonic())
            return super().finish(outcomes)

    settings = PipelineSettings("w1", max_wait_ms=1.0, idle_wait_ms=20, burst=True, finish_backoff_max_s=0.5)
    decoder, model = PassThrough(), Recorder(cap=4)
    started = time.monotonic()
    Pipeline(Outage(broker, "w1"), decoder, model, settings, threading.Event()).run()
    assert all(broker.status(i) == "finished" for i in ids)
    assert back_at[0] - (started + 4.0) < 1.5  # within the cap (0.5 s) of its end; uncapped: 3.5 s after it
