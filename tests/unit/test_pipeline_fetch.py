"""Jobs by reference in the pipeline, on the in-memory store with a stand-in fetch stage: no network, no Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from worker.decode import Fetched, Fetches
from worker.errors import JobError
from worker.pipeline import InHand, Pipeline, PipelineSettings
from worker.store.memory import MemoryBroker, MemoryStore

from ..conftest import wait_for
from .test_pipeline import PassThrough, Recorder


class FakeFetch:
    """Answers ``https://x/<name>`` with the bytes ``<name>``; ``https://x/down`` fails retryably, and
    ``https://x/held`` answers only once ``release`` is set (from its own thread, like the real stage)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.urls: list[str] = []
        self.threads: list[threading.Thread] = []

    def submit(self, url: str, done: Callable[[Fetched], None]) -> None:
        self.urls.append(url)
        thread = threading.Thread(target=self._run, args=(url, done))
        self.threads.append(thread)
        thread.start()

    def _run(self, url: str, done: Callable[[Fetched], None]) -> None:
        name = url.rsplit("/", 1)[1]
        if name == "held":
            self.release.wait(10)
        if name == "down":
            error = JobError("fetch_error", f"{url}: HTTP 503", retryable=True)
            done(Fetched(None, error, time.monotonic(), 1.0))
        else:
            done(Fetched(name.encode(), None, time.monotonic(), 1.0))

    def close(self, drop_queued: bool = False) -> None:
        for thread in self.threads:
            thread.join(10)


def run(broker: MemoryBroker, predictor: Recorder, fetcher: Fetches | None, max_wait_ms: float = 50.0) -> int:
    settings = PipelineSettings("w1", max_wait_ms=max_wait_ms, idle_wait_ms=20, burst=True)
    return Pipeline(
        MemoryStore(broker, "w1"), PassThrough(), predictor, settings, threading.Event(), fetcher=fetcher
    ).run()


def results(broker: MemoryBroker) -> dict[str, dict]:
    return {r["job_id"]: r for r in broker.published}


def test_url_jobs_are_fetched_then_decoded_and_batched_with_byte_jobs():
    broker = MemoryBroker()
    ids = [
        broker.enqueue({"image": b"a"}),
        broker.enqueue({"image_url": "https://x/b", "meta": {"ad": 2}}),
        broker.enqueue({"image": b"c"}),
        broker.enqueue({"image_url": "https://x/d"}),
    ]
    predictor, fetcher = Recorder(cap=8), FakeFetch()
    assert run(broker, predictor, fetcher, max_wait_ms=300) == 4
    assert fetcher.urls == ["https://x/b", "https://x/d"]
    assert sorted(predictor.batches[0]) == [b"a", b"b", b"c", b"d"]  # one batch: bytes and fetched images together
    got = results(broker)
    assert [got[i]["label"] for i in ids] == ["a", "b", "c", "d"] and got[ids[1]]["meta"] == {"ad": 2}


def test_a_failed_fetch_fails_only_its_job_and_a_retryable_one_is_retried_first():
    broker = MemoryBroker()
    down = broker.enqueue({"image_url": "https://x/down"}, retries=1)
    fine = broker.enqueue({"image_url": "https://x/fine"})
    fetcher = FakeFetch()
    run(broker, Recorder(cap=8), fetcher)
    assert fetcher.urls.count("https://x/down") == 2  # the first try, then the retry
    assert broker.status(down) == "failed" and broker.status(fine) == "finished"
    assert results(broker)[down]["error"]["type"] == "fetch_error"


def test_a_worker_without_a_fetch_stage_refuses_url_jobs_as_forbidden():
    broker = MemoryBroker()
    url_job, byte_job = broker.enqueue({"image_url": "https://x/a"}), broker.enqueue({"image": b"b"})
    run(broker, Recorder(cap=8), None)
    got = results(broker)
    assert got[url_job]["error"]["type"] == "forbidden_url" and "--fetch-allow" in got[url_job]["error"]["message"]
    assert got[byte_job]["ok"]


def test_a_slow_fetch_does_not_hold_its_batch_mates_past_max_wait():
    broker = MemoryBroker()
    held = broker.enqueue({"image_url": "https://x/held"})
    quick = [broker.enqueue({"image": b"q"}) for _ in range(3)]
    fetcher, predictor = FakeFetch(), Recorder(cap=8)
    thread = threading.Thread(target=run, args=(broker, predictor, fetcher), kwargs={"max_wait_ms": 20})
    thread.start()
    deadline = time.monotonic() + 10
    while not all(broker.status(i) == "finished" for i in quick) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert all(broker.status(i) == "finished" for i in quick) and broker.status(held) == "started"
    fetcher.release.set()
    thread.join(10)
    assert broker.status(held) == "finished" and results(broker)[held]["label"] == "held"


class SlowOrigin:
    """A ``Fetcher`` whose every fetch waits for ``release`` (a slow origin, up to the 15 s fetch timeout)."""

    def __init__(self) -> None:
        self.release, self.started = threading.Event(), threading.Semaphore(0)
        self.fetched: list[str] = []

    def fetch(self, url: str) -> bytes:
        self.started.release()
        self.release.wait(10)
        self.fetched.append(url)
        return url.rsplit("/", 1)[1].encode()

    def close(self) -> None:
        pass


def test_a_stop_waits_only_for_the_fetches_under_way_and_gives_the_others_back():
    from worker.decode.fetch import FetchStage

    broker = MemoryBroker()
    ids = [broker.enqueue({"image_url": f"https://x/img{n}"}) for n in range(10)]
    origin, stop, hand = SlowOrigin(), threading.Event(), InHand()
    store = MemoryStore(broker, "w1")
    settings = PipelineSettings("w1", max_wait_ms=5.0, idle_wait_ms=20)
    stage = FetchStage(origin, threads=2)
    pipeline = Pipeline(store, PassThrough(), Recorder(cap=8), settings, stop, hand=hand, fetcher=stage)
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    assert origin.started.acquire(timeout=5) and origin.started.acquire(timeout=5)  # two fetches under way
    assert wait_for(lambda: hand.count() == 10)
    stop.set()
    # the slow origin answers once the stage has shut down and emptied its queue (what was dropped is dropped)
    assert wait_for(lambda: stage.pool._shutdown)
    with stage.pool._shutdown_lock:  # held while a shutdown drops what is queued: dropped once we get it
        origin.release.set()
    thread.join(10)
    assert not thread.is_alive() and len(origin.fetched) == 2 and pipeline.unstarted == 8
    assert store.give_back(hand.snapshot(), min_age_s=0.0) and hand.count() == 0  # what the service does next
    states = [broker.status(i) for i in ids]
    assert states.count("finished") == 2 and states.count("queued") == 8 and len(broker.queue) == 8
