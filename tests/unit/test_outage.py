"""An outage of the queue store (a failover, a restart) is one warning however many threads and retries
fail, and one line when a call succeeds again."""

from __future__ import annotations

import logging
import threading
import time

from worker.outage import Outage


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
