"""The heartbeat reports a batch as soon as it is done, and images/s over the last minute includes it."""

from __future__ import annotations

import time

import pytest

from worker.heartbeat import Heartbeat
from worker.progress import InHand, Stats
from worker.store import WorkerStats
from worker.store.memory import MemoryBroker, MemoryStore


class RecordingStore(MemoryStore):
    """The in-memory store, keeping every heartbeat's counters."""

    def __init__(self) -> None:
        super().__init__(MemoryBroker(), "w1")
        self.beats: list[WorkerStats] = []

    def heartbeat(self, stats: WorkerStats) -> int:
        self.beats.append(stats)
        return super().heartbeat(stats)


def wait_for(condition, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.01)
    pytest.fail("condition not met")


def test_a_finished_batch_is_reported_at_once_not_a_third_of_the_ttl_later():
    store, stats = RecordingStore(), Stats()
    # regular beats only every 20 s; after a batch, at most every 0.05 s
    heartbeat = Heartbeat(store, InHand(), stats, ttl_s=60.0, reap_s=30.0, after_batch_s=0.05)
    heartbeat.start()
    try:
        wait_for(lambda: store.beats)  # the first beat, at start
        for batch in range(1, 4):
            stats.jobs += 10
            stats.batches += 1
            beat = wait_for(lambda b=batch: next((s for s in store.beats if s.batches == b), None), timeout_s=1.0)
            assert beat.jobs == 10 * batch and beat.images_per_s_1m > 0  # never 0.0 right after a burst
    finally:
        heartbeat.stop()


def test_batches_in_quick_succession_are_reported_at_most_once_per_after_batch_s():
    store, stats = RecordingStore(), Stats()
    heartbeat = Heartbeat(store, InHand(), stats, ttl_s=60.0, reap_s=30.0, current_s=0.01, after_batch_s=0.2)
    heartbeat.start()
    try:
        wait_for(lambda: store.beats)  # the first beat, at start
        began = time.monotonic()
        for _ in range(50):  # a busy worker: 50 batches, one about every 10 ms
            stats.jobs += 64
            stats.batches += 1
            time.sleep(0.01)  # the pace of the batches, not a wait for anything
        final = stats.batches
        last = wait_for(lambda: next((s for s in store.beats if s.batches == final), None), timeout_s=2.0)
        assert last.jobs == 64 * final  # the burst's end is reported (within after_batch_s)
        spacing_bound = 2 + (time.monotonic() - began) / 0.2  # the start, then at most one beat per 0.2 s
        assert final == 50 and 2 <= len(store.beats) <= spacing_bound  # not one per batch
    finally:
        heartbeat.stop()


def test_images_per_second_counts_the_last_minute_including_the_latest_batch():
    heartbeat = Heartbeat(RecordingStore(), InHand(), Stats(), ttl_s=20.0)
    assert heartbeat.rate(0, 1000.0) == 0.0
    assert heartbeat.rate(30, 1010.0) == 3.0  # 30 images in the 10 s since the first beat
    jobs, now = 30, 1010.0
    for _ in range(1200):  # 120 s at 10 images/s, beating after every batch (10 times a second)
        now += 0.1
        jobs += 1
        rate = heartbeat.rate(jobs, now)
    assert 9.5 <= rate <= 10.5
    for _ in range(300):  # then idle for 30 s: half of the last minute was busy
        now += 0.1
        rate = heartbeat.rate(jobs, now)
    assert 4.5 <= rate <= 5.5


def test_a_store_that_is_down_is_not_retried_in_a_tight_loop():
    class DownStore(RecordingStore):
        def heartbeat(self, stats: WorkerStats) -> int:
            from worker.store import StoreUnavailable

            self.beats.append(stats)
            raise StoreUnavailable("redis is down")

    store, stats = DownStore(), Stats()
    # regular beats only every 20 s; after a batch, at most every 0.05 s
    heartbeat = Heartbeat(store, InHand(), stats, ttl_s=60.0, reap_s=30.0, after_batch_s=0.05)
    heartbeat.start()
    try:
        wait_for(lambda: store.beats)  # the first beat, at start: it failed
        stats.batches += 1
        wait_for(lambda: len(store.beats) >= 2)  # the beat for the batch: it failed too
        time.sleep(0.5)  # five polls of the batch counter (every 0.1 s): none of them beats again
    finally:
        heartbeat.stop()
    assert len(store.beats) == 2  # the first beat and the one for the batch, not one per poll


def sample(metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_store_errors_are_counted_while_redis_is_down_not_once_it_answers_again():
    pytest.importorskip("prometheus_client", reason="the metrics extra")
    from worker.metrics import Metrics
    from worker.store import StoreUnavailable

    class Down(RecordingStore):
        def heartbeat(self, stats: WorkerStats) -> int:
            raise StoreUnavailable("connection refused")

    stats, metrics = Stats(), Metrics("cpu")
    heartbeat = Heartbeat(Down(), InHand(), stats, ttl_s=60.0, metrics=metrics)
    stats.store_error(StoreUnavailable("connection refused"), "take")  # the take thread's, meanwhile
    with pytest.raises(StoreUnavailable):
        heartbeat.beat()
    assert sample(metrics, "adclassify_store_errors_total", {"kind": "unavailable"}) == 1.0


def test_feed_lag_series_follow_the_groups_that_exist_and_none_reads_as_nan():
    pytest.importorskip("prometheus_client", reason="the metrics extra")
    import math

    from worker.metrics import Metrics

    class Lags(RecordingStore):
        def __init__(self) -> None:
            super().__init__()
            self.lags: dict[str, int | None] = {"web": 3, "backfill-1a2b": 40}

        def feed_lags(self) -> dict[str, int | None]:
            return dict(self.lags)

    store, metrics = Lags(), Metrics("cpu")
    heartbeat = Heartbeat(store, InHand(), Stats(), ttl_s=60.0, metrics=metrics)
    heartbeat.feed_lags()
    name = "adclassify_results_feed_lag_entries"
    assert sample(metrics, name, {"group": "backfill-1a2b"}) == 40.0
    store.lags = {"web": None}  # the backfill finished and destroyed its group; this Redis says no lag
    heartbeat.feed_lags()
    assert sample(metrics, name, {"group": "backfill-1a2b"}) is None  # gone, not stuck at 40
    assert math.isnan(sample(metrics, name, {"group": "web"}))


def test_jobs_the_reaper_fails_as_poison_are_counted_in_the_jobs_metric():
    pytest.importorskip("prometheus_client", reason="the metrics extra")
    from worker.metrics import Metrics

    class Reaping(RecordingStore):
        def reap(self, takeover: bool = False) -> tuple[list[str], list[str]]:
            return [], ["lost-three-times-1", "lost-three-times-2"]

    metrics = Metrics("cpu")
    heartbeat = Heartbeat(Reaping(), InHand(), Stats(), ttl_s=60.0, reap_s=3600.0, metrics=metrics)
    heartbeat.start()  # a first reaper pass at once
    try:
        wait_for(lambda: sample(metrics, "adclassify_jobs_total", {"outcome": "poison"}) == 2.0)
    finally:
        heartbeat.stop()
