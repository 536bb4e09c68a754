"""The streaming pipeline on the in-memory store: milliseconds, no Redis, no model file."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch

from worker.decode import DecodeResult
from worker.errors import JobError
from worker.infer import Predictor
from worker.pipeline import InHand, Pipeline, PipelineSettings
from worker.store import PartlyRecorded, StoreUnavailable
from worker.store.memory import MemoryBroker, MemoryStore

from ..conftest import wait_for


class PassThrough:
    """A decoder whose pixels are the job's bytes; ``b"bad"`` is refused like a corrupt image. A take's images
    come back together, in one list (as a GPU decoder's call does)."""

    backend = "cpu"

    def submit(self, data: bytes, done: Callable[[DecodeResult], None]) -> None:
        done(self.result(data))

    def submit_many(self, images: list[bytes], done: Callable[[list[tuple[int, DecodeResult]]], None]) -> None:
        done([(i, self.result(data)) for i, data in enumerate(images)])

    @staticmethod
    def result(data: bytes) -> DecodeResult:
        error = JobError("unsupported_image", "not an image") if data == b"bad" else None
        return DecodeResult(None if error else data, error, time.monotonic(), 0.01)

    def close(self) -> None:
        pass


class Recorder:
    """A model stand-in: records each batch (and how many jobs were in hand then), answers top-1."""

    def __init__(self, cap: int, hand: InHand | None = None, gate: threading.Event | None = None) -> None:
        self.cap, self.tag, self.hand, self.gate = cap, "fake@1", hand, gate
        self.batches: list[list[bytes]] = []
        self.in_hand_at_batch: list[int] = []

    overlaps = False  # a CPU-like device: a batch is done when its launch returns

    def launch(self, pixels: list[bytes]) -> Answered:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(pixels)
        self.in_hand_at_batch.append(len(self.hand.held) if self.hand else -1)
        return Answered([[(p.decode(), 1.0)] for p in pixels])


class Answered:
    """A launched batch whose answers are known (what ``Predictor.launch`` returns, simplified)."""

    def __init__(self, preds: list, log: list | None = None, tag: str = "fake@1") -> None:
        self.preds, self.log, self.tag = preds, log, tag

    def result(self) -> tuple[list, float]:
        if self.log is not None:
            self.log.append(("result", len(self.log)))
        return self.preds, 0.1


class WatchedHand(InHand):
    """Jobs in hand that tell when the taker first held some (``holding``) and when it waited for room and
    found none (``full``): events to wait on, instead of sleeping and hoping."""

    def __init__(self) -> None:
        super().__init__()
        self.holding, self.full = threading.Event(), threading.Event()

    def add(self, jobs: list) -> None:
        super().add(jobs)
        if jobs:
            self.holding.set()

    def wait_until(self, ok: Callable[[int], bool], stop: threading.Event | None = None) -> int:
        if not ok(self.count()):
            self.full.set()
        return super().wait_until(ok, stop)


def run(
    store: MemoryStore,
    predictor,
    *,
    hand: InHand | None = None,
    burst: bool = True,
    stop: threading.Event | None = None,
    max_wait_ms: float = 1.0,
) -> int:
    settings = PipelineSettings("w1", max_wait_ms=max_wait_ms, idle_wait_ms=20, burst=burst)
    return Pipeline(store, PassThrough(), predictor, settings, stop or threading.Event(), hand=hand).run()


def fill(broker: MemoryBroker, images: list[bytes], **kwargs) -> list[str]:
    return [broker.enqueue({"image": image, "meta": {"i": i}}, **kwargs) for i, image in enumerate(images)]


def test_every_job_is_answered_in_batches_no_larger_than_the_cap():
    broker = MemoryBroker()
    ids = fill(broker, [f"img{i}".encode() for i in range(50)])
    predictor = Recorder(cap=8)
    assert run(MemoryStore(broker, "w1"), predictor) == 50
    assert all(broker.status(i) == "finished" for i in ids)
    assert max(len(b) for b in predictor.batches) <= 8 and sum(len(b) for b in predictor.batches) == 50
    results = {r["job_id"]: r for r in broker.published}
    assert results[ids[7]]["label"] == "img7" and results[ids[7]]["meta"] == {"i": 7}


def test_results_are_built_on_the_finish_stages_thread_not_the_infer_thread(monkeypatch):
    import worker.finishing as finishing

    built_on, real = [], finishing.answer

    def watched(*args, **kwargs):
        built_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(finishing, "answer", watched)
    broker = MemoryBroker()
    ids = fill(broker, [f"img{i}".encode() for i in range(20)])
    assert run(MemoryStore(broker, "w1"), Recorder(cap=8)) == 20
    assert built_on == ["finish"] * 20  # the infer thread only waits for answers and launches the next batch
    assert [r["label"] for r in sorted(broker.published, key=lambda r: ids.index(r["job_id"]))] == [
        f"img{i}" for i in range(20)
    ]


class Overlapping(Recorder):
    """A CUDA-like device: a launched batch runs on; the log shows when launches and answers happen. The first
    launch waits until the taker has filled the hand, so more decoded jobs are ready while it runs."""

    overlaps = True

    def __init__(self, cap: int, hand: WatchedHand) -> None:
        super().__init__(cap, hand)
        self.log: list[tuple[str, int]] = []

    def launch(self, pixels: list[bytes]) -> Answered:
        if not self.batches:
            assert self.hand.full.wait(10)
        self.batches.append(pixels)
        self.log.append(("launch", len(self.log)))
        return Answered([[(p.decode(), 1.0)] for p in pixels], self.log)


def test_on_an_overlapping_device_the_next_batch_launches_before_the_last_ones_answers_are_read():
    broker, hand = MemoryBroker(), WatchedHand()
    ids = fill(broker, [f"img{i}".encode() for i in range(40)])
    predictor = Overlapping(cap=4, hand=hand)
    assert run(MemoryStore(broker, "w1"), predictor, hand=hand) == 40
    assert all(broker.status(i) == "finished" for i in ids)
    running, peak = 0, 0
    for kind, _ in predictor.log:
        running += 1 if kind == "launch" else -1
        peak = max(peak, running)
    assert peak == 2 and running == 0  # one batch launched while the last ran; never more; all answered
    results = {r["job_id"]: r for r in broker.published}
    assert [results[i]["label"] for i in ids] == [f"img{i}" for i in range(40)]  # each job its own answer


def test_a_bad_image_fails_alone_and_its_batch_mates_succeed():
    broker = MemoryBroker()
    ids = fill(broker, [b"a", b"bad", b"c"])
    run(MemoryStore(broker, "w1"), Recorder(cap=8))
    assert [broker.status(i) for i in ids] == ["finished", "failed", "finished"]
    failed = next(r for r in broker.published if r["job_id"] == ids[1])
    assert failed["error"]["type"] == "unsupported_image" and failed["ok"] is False


def test_a_job_lost_with_a_worker_before_runs_alone_with_nothing_else_in_hand():
    broker = MemoryBroker()
    fill(broker, [b"a", b"b"])
    suspect = broker.enqueue({"image": b"suspect"})
    broker.jobs[suspect].lost = 1
    fill(broker, [b"c", b"d"])
    hand = InHand()
    predictor = Recorder(cap=8, hand=hand)
    run(MemoryStore(broker, "w1"), predictor, hand=hand)
    alone = predictor.batches.index([b"suspect"])
    assert predictor.in_hand_at_batch[alone] == 1
    assert broker.status(suspect) == "finished"


class Sweeping(MemoryStore):
    """A take made of two script calls, as a sweep of two shards (or of ``--queue high,default``) makes: one
    suspect per call, so two in one take."""

    def _start(self, ids: list[str], max_jobs: int) -> list:
        first = super()._start(ids, max_jobs)
        return first + super()._start([], max_jobs - len(first))


def two_suspects_and_two_others() -> tuple[MemoryBroker, list[str]]:
    """A queue of two jobs lost with a worker before, then two others; the suspects' ids."""
    broker = MemoryBroker()
    suspects = [broker.enqueue({"image": image}) for image in (b"suspect-1", b"suspect-2")]
    for job_id in suspects:
        broker.jobs[job_id].lost = 1
    fill(broker, [b"c", b"d"])
    return broker, suspects


def test_two_jobs_lost_before_in_one_take_each_run_alone_and_do_not_hang_the_taker():
    broker, suspects = two_suspects_and_two_others()
    hand = InHand()
    predictor = Recorder(cap=8, hand=hand)
    thread = threading.Thread(target=run, args=(Sweeping(broker, "w1"), predictor), kwargs={"hand": hand}, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the taker waited for a hand that its own second suspect kept from emptying"
    for image in (b"suspect-1", b"suspect-2"):
        alone = predictor.batches.index([image])  # in a batch of its own
        assert predictor.in_hand_at_batch[alone] <= 2  # with at most the other suspect, waiting unstarted
    assert all(broker.status(i) == "finished" for i in suspects)


def test_a_stop_while_suspects_wait_to_run_alone_hands_them_back_unstarted():
    broker, _ = two_suspects_and_two_others()
    gate, stop, hand = threading.Event(), threading.Event(), WatchedHand()
    predictor = Recorder(cap=8, gate=gate, hand=hand)  # the first batch (c, d) blocks: the suspects wait
    settings = PipelineSettings("w1", max_wait_ms=1.0, idle_wait_ms=20, burst=False)
    pipeline = Pipeline(Sweeping(broker, "w1"), PassThrough(), predictor, settings, stop, hand=hand)
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    assert hand.full.wait(10)  # the taker waits for the hand to empty before the first suspect
    stop.set()
    gate.set()
    thread.join(30)
    assert not thread.is_alive() and pipeline.unstarted == 2 and hand.count() == 0
    assert [b for b in predictor.batches if b[0].startswith(b"suspect")] == []  # neither ran


class OneShardDown(MemoryStore):
    """Jobs whose image starts with ``down`` live on a shard that is down until ``back`` is set: a finish records
    the others and raises ``PartlyRecorded`` naming them, as ``ShardedStore.finish`` does."""

    def __init__(self, broker: MemoryBroker, name: str, back: threading.Event) -> None:
        super().__init__(broker, name)
        self.back = back

    def finish(self, outcomes: list) -> list[str]:
        if self.back.is_set():
            return super().finish(outcomes)
        up = [o for o in outcomes if not o.job.kwargs["image"].startswith(b"down")]
        skipped = super().finish(up) if up else []
        if len(up) == len(outcomes):
            return skipped
        if not up:
            raise StoreUnavailable("shard 1 is down")
        raise PartlyRecorded("shard 1 is down", {o.job.execution for o in up}, skipped)


def test_a_shard_that_is_down_holds_back_its_own_jobs_alone():
    broker = MemoryBroker()
    (stuck,) = fill(broker, [b"down-1"])
    others = fill(broker, [f"img{i}".encode() for i in range(60)])  # 5x the jobs a hand holds (3 batches of 4)
    back = threading.Event()
    thread = threading.Thread(target=run, args=(OneShardDown(broker, "w1", back), Recorder(cap=4)), daemon=True)
    thread.start()
    wait_for(lambda: all(broker.status(i) == "finished" for i in others), timeout_s=30)
    assert broker.status(stuck) == "started"  # kept, retried: its shard's outage is not the others'
    back.set()
    thread.join(30)
    assert not thread.is_alive() and broker.status(stuck) == "finished"


class Buggy(Recorder):
    """A model stand-in whose launch fails with an error no stage expects (a bug, the host out of memory)."""

    def launch(self, pixels: list[bytes]) -> Answered:
        raise MemoryError("host out of memory while stacking a batch")


def test_a_stage_that_dies_ends_the_pipeline_and_marks_the_worker_broken_instead_of_hanging():
    from worker.health import Health
    from worker.progress import StageFailed

    broker = MemoryBroker()
    fill(broker, [b"x"] * 20)
    health, failed = Health(redis_ttl_s=20.0), []
    settings = PipelineSettings("w1", max_wait_ms=1.0, idle_wait_ms=20, burst=False)
    pipeline = Pipeline(
        MemoryStore(broker, "w1"), PassThrough(), Buggy(cap=4), settings, threading.Event(), health=health
    )

    def run_it() -> None:
        try:
            pipeline.run()
        except StageFailed as exc:
            failed.append(exc)

    thread = threading.Thread(target=run_it, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the pipeline waited for ever on its dead infer stage"
    assert failed and "infer" in str(failed[0]) and "MemoryError" in str(failed[0])
    assert health.broken is not None and "infer" in health.broken  # the watchdog exits the worker at once


def test_jobs_in_hand_are_bounded_to_a_few_batches():
    broker = MemoryBroker()
    fill(broker, [b"x"] * 100)
    gate, stop, hand = threading.Event(), threading.Event(), WatchedHand()
    predictor = Recorder(cap=4, gate=gate)
    kwargs = {"stop": stop, "hand": hand}
    thread = threading.Thread(target=run, args=(MemoryStore(broker, "w1"), predictor), kwargs=kwargs)
    thread.start()
    assert hand.full.wait(5)  # the taker waits for room, the model blocked: nothing is released meanwhile
    assert len(broker.queue) == 100 - 12  # 3 batches of 4 in hand, no more
    stop.set()
    gate.set()
    thread.join(10)
    assert len(broker.queue) == 100 - 12 and all(j.status in ("finished", "queued") for j in broker.jobs.values())


def test_stop_finishes_and_acknowledges_everything_in_hand_and_takes_no_more():
    broker = MemoryBroker()
    ids = fill(broker, [b"x"] * 40)
    gate, stop, hand = threading.Event(), threading.Event(), WatchedHand()
    kwargs = {"stop": stop, "burst": False, "hand": hand}
    thread = threading.Thread(target=run, args=(MemoryStore(broker, "w1"), Recorder(cap=4, gate=gate)), kwargs=kwargs)
    thread.start()
    assert hand.holding.wait(5)  # jobs taken, their batch held at the model
    stop.set()
    gate.set()
    thread.join(10)
    states = [broker.status(i) for i in ids]
    assert not thread.is_alive() and "started" not in states
    assert states.count("finished") >= 4 and states.count("queued") == len(broker.queue) > 0


class FlakyStore(MemoryStore):
    """The store goes away for the first ``outage`` finish calls (Redis down), then comes back."""

    def __init__(self, broker: MemoryBroker, outage: int) -> None:
        super().__init__(broker, "w1")
        self.outage, self.calls = outage, 0

    def finish(self, outcomes):
        self.calls += 1
        if self.calls <= self.outage:
            raise StoreUnavailable("connection refused")
        return super().finish(outcomes)


def test_finished_batches_are_kept_through_an_outage_and_written_once_it_ends():
    broker = MemoryBroker()
    ids = fill(broker, [b"x"] * 20)
    store = FlakyStore(broker, outage=3)
    settings = PipelineSettings("w1", max_wait_ms=1.0, idle_wait_ms=20, burst=True, finish_backoff_max_s=0.01)
    assert Pipeline(store, PassThrough(), Recorder(cap=4), settings, threading.Event()).run() == 20
    assert store.calls > 3 and all(broker.status(i) == "finished" for i in ids)
    assert sorted(r["job_id"] for r in broker.published) == sorted(ids)  # each once


def test_a_stop_during_an_outage_ends_within_the_shutdown_timeout_counted_from_the_stop():
    from worker.pipeline import ShutdownIncomplete

    broker = MemoryBroker()
    fill(broker, [b"x"] * 8)
    store, stop = FlakyStore(broker, outage=10**6), threading.Event()
    settings = PipelineSettings("w1", max_wait_ms=1.0, idle_wait_ms=20, shutdown_timeout_s=1.0)
    pipeline = Pipeline(store, PassThrough(), Recorder(cap=4), settings, stop)
    ended: list[float] = []

    def run_it() -> None:
        try:
            pipeline.run()
        except ShutdownIncomplete:
            ended.append(time.monotonic())

    threading.Thread(target=run_it, daemon=True).start()
    assert wait_for(lambda: store.calls >= 4, 10)  # 0.5 + 1 + 2 s of back-off: the next wait is 4 s
    stopped = time.monotonic()
    stop.set()
    assert wait_for(lambda: ended, 10)
    assert ended[0] - stopped < 3.0  # the 1 s timeout from the stop, not after the 4 s back-off under way (5 s)
    assert pipeline.unrecorded == 8


class TinyModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class OomAbove(Predictor):
    """A real ``Predictor`` whose model runs out of memory on batches larger than ``limit``."""

    def __init__(self, limit: int, cap: int, fail_all: bool = False, buckets: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        from worker.decode.cpu import Preprocess
        from worker.model import Classifier, ModelInfo

        info = ModelInfo("tiny", "1", ("r", "g", "b"), Preprocess(size=(2, 2), resize="stretch"))
        model = Classifier(TinyModel().eval(), info, torch.device("cpu"), buckets=list(buckets))
        original = model.start_topk

        def start_topk(batch: torch.Tensor, k: int = 5):
            if fail_all:
                raise RuntimeError("device-side assert")
            if batch.shape[0] > limit:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return original(batch, k)

        model.start_topk = start_topk  # type: ignore[method-assign]
        super().__init__(model, cap, topk=1)


def test_an_out_of_memory_that_not_even_one_image_survives_fails_the_batch_and_leaves_the_cap():
    predictor = OomAbove(limit=0, cap=8)  # a moment of no memory at all (a reload's spare copy on a full device)
    preds, _ = predictor.launch([bytes([i, 0, 0] * 4) for i in range(4)]).result()
    assert [p.kind for p in preds] == ["model_error"] * 4 and all(p.retryable for p in preds)
    assert predictor.cap == 8 and predictor.model.buckets == [1, 2, 4, 8]  # not lowered to 1 for good


def test_the_halves_of_a_split_run_at_their_own_size_not_padded_to_a_bucket_of_the_old_cap():
    predictor = OomAbove(limit=24, cap=48, buckets=(32, 48))  # 24 fit; padded up to 32 they would not
    preds, _ = predictor.launch([bytes([i, 0, 0] * 4) for i in range(48)]).result()
    assert all(not isinstance(p, JobError) for p in preds) and len(preds) == 48
    assert predictor.cap == 24 and predictor.model.buckets[-1] == 24


def test_out_of_memory_splits_the_batch_answers_every_job_and_lowers_the_cap():
    broker = MemoryBroker()
    ids = fill(broker, [bytes([i, 0, 0] * 4) for i in range(8)])
    predictor = OomAbove(limit=2, cap=8)
    run(MemoryStore(broker, "w1"), predictor, max_wait_ms=50)
    assert all(broker.status(i) == "finished" for i in ids)
    assert predictor.cap == 2 and predictor.model.buckets[-1] == 2


def test_a_model_error_is_retried_then_failed_clearly():
    broker = MemoryBroker()
    (job_id,) = fill(broker, [bytes(12)], retries=2)
    run(MemoryStore(broker, "w1"), OomAbove(limit=8, cap=8, fail_all=True))
    assert broker.status(job_id) == "failed" and broker.jobs[job_id].retries_left == 0
    (result,) = [r for r in broker.published if r["job_id"] == job_id]  # published once, at the end
    assert result["error"]["type"] == "model_error" and "device-side assert" in result["error"]["message"]


@pytest.mark.parametrize("kind", ["forbidden", "expired"])
def test_jobs_that_may_not_run_never_reach_the_model(kind):
    broker = MemoryBroker()
    if kind == "forbidden":
        job_id = broker.enqueue({"cmd": "id"}, func_name="os.system")
    else:
        job_id = broker.enqueue({"image": b"x", "deadline": time.time() - 1})
    predictor = Recorder(cap=4)
    run(MemoryStore(broker, "w1"), predictor)
    assert predictor.batches == [] and broker.status(job_id) == "failed"
    assert broker.published[0]["error"]["type"] == {"forbidden": "forbidden_function", "expired": "expired"}[kind]


def test_photos_alike_in_size_and_tail_but_not_in_bytes_each_run():
    tail = b"T" * 64  # repeats are found by size and last bytes, then compared in full
    broker = MemoryBroker()
    ids = fill(broker, [b"first" + tail, b"other" + tail, b"first" + tail])
    predictor = Recorder(cap=8)
    assert run(MemoryStore(broker, "w1"), predictor, max_wait_ms=200) == 3
    assert sorted(p for b in predictor.batches for p in b) == [b"first" + tail, b"other" + tail]
    results = {r["job_id"]: r for r in broker.published}
    assert [results[i]["label"] for i in ids] == [("first" + "T" * 64), ("other" + "T" * 64), ("first" + "T" * 64)]


def test_a_photo_twice_in_a_batch_runs_once_and_both_jobs_get_its_answer():
    broker = MemoryBroker()
    ids = fill(broker, [b"same", b"other", b"same", b"same"])
    predictor = Recorder(cap=8)
    assert run(MemoryStore(broker, "w1"), predictor, max_wait_ms=200) == 4
    assert sum(len(b) for b in predictor.batches) < 4  # forward rows: the repeats were not run again
    results = {r["job_id"]: r for r in broker.published}
    assert [results[i]["label"] for i in ids] == ["same", "other", "same", "same"]


class OneByOne(PassThrough):
    """A decoder that hands images back one at a time, when the test says (a slow decoder's fragments)."""

    def __init__(self) -> None:
        self.pending: list[tuple[bytes, Callable]] = []
        self.cond = threading.Condition()
        self.open = False

    def submit_many(self, images: list[bytes], done: Callable[[list[tuple[int, DecodeResult]]], None]) -> None:
        with self.cond:
            self.pending += [(data, lambda r, i=i: done([(i, r)])) for i, data in enumerate(images)]
            self.cond.notify_all()
            if not self.open:
                return
        self.release(len(images))

    def release(self, count: int) -> None:
        """Hand back ``count`` images, oldest first, waiting for them to be submitted."""
        for _ in range(count):
            with self.cond:
                assert self.cond.wait_for(lambda: self.pending, 5)
                data, done = self.pending.pop(0)
            done(self.result(data))

    def open_up(self) -> None:
        """From now on every image comes back at once."""
        with self.cond:
            self.open, count = True, len(self.pending)
        self.release(count)


class CountingTakes(MemoryStore):
    def __init__(self, broker: MemoryBroker, name: str) -> None:
        super().__init__(broker, name)
        self.asked: list[int] = []

    def take(self, max_jobs: int, timeout_s: float):
        self.asked.append(max_jobs)
        return super().take(max_jobs, timeout_s)


class OneLaunchAtATime(Recorder):
    """A model that runs a batch only when the test lets one through."""

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self.turns = threading.Semaphore(0)

    def launch(self, pixels: list[bytes]) -> Answered:
        assert self.turns.acquire(timeout=10)
        return super().launch(pixels)


def test_a_full_hand_takes_again_only_once_half_a_batch_has_room():
    # a busy model runs whatever is decoded (fragments of one job here): they must not turn into takes of one
    # job each (a round trip per job)
    broker = MemoryBroker()
    ids = fill(broker, [f"img{i}".encode() for i in range(60)])
    decoder, store, model = OneByOne(), CountingTakes(broker, "w1"), OneLaunchAtATime(cap=8)
    settings = PipelineSettings("w1", max_wait_ms=1.0, idle_wait_ms=20, burst=True)
    thread = threading.Thread(target=Pipeline(store, decoder, model, settings, threading.Event()).run, daemon=True)
    thread.start()
    decoder.release(8)  # a first full batch, held at the model
    for n in range(8, 14):  # then one image decoded while the model runs, run as a batch of its own
        decoder.release(1)
        model.turns.release()
        assert wait_for(lambda n=n: broker.status(ids[n - 1]) == "finished")
    assert [len(b) for b in model.batches][-5:] == [1] * 5
    decoder.open_up()
    for _ in range(60):
        model.turns.release()
    thread.join(10)
    assert not thread.is_alive() and all(broker.status(i) == "finished" for i in ids)
    assert min(store.asked) >= 4, store.asked  # cap 8: never fewer than half a batch asked for


class BrokenDevice(Recorder):
    """A model on a device in a sticky error state: every batch fails at once."""

    def launch(self, pixels: list[bytes]) -> Answered:
        self.batches.append(pixels)
        return Answered([JobError("model_error", "CUDA error: an illegal memory access", retryable=True)] * len(pixels))


def test_a_model_that_fails_batch_after_batch_ends_the_worker_instead_of_failing_the_queue():
    from worker.health import BROKEN_EXIT, Health, Watchdog

    broker = MemoryBroker()
    fill(broker, [f"img{i}".encode() for i in range(200)])
    health, hand, exits, deaths = Health(redis_ttl_s=10), InHand(), [], []
    watchdog = Watchdog(health, hand.count, 300, on_stall=lambda: deaths.append(1), exit=exits.append)
    watchdog.start()
    model = BrokenDevice(cap=4)
    settings = PipelineSettings("w1", max_wait_ms=1.0, idle_wait_ms=20)
    pipeline = Pipeline(MemoryStore(broker, "w1"), PassThrough(), model, settings, threading.Event(), hand=hand,
                        health=health)  # fmt: skip
    threading.Thread(target=pipeline.run, daemon=True).start()
    assert wait_for(lambda: exits == [BROKEN_EXIT])
    assert deaths == [1] and health.stalled and "3 batches in a row failed in the model" in health.broken
    assert len(model.batches) == 3  # no batch after the third: the rest of the queue is left to healthy workers
    failed = [j for j in broker.jobs.values() if j.status == "failed"]
    assert len(failed) <= 8 and len(broker.queue) >= 200 - 20  # two batches failed; at most a hand more taken


class Finished(MemoryStore):
    """The in-memory store, keeping every outcome it records."""

    def __init__(self, broker: MemoryBroker, name: str) -> None:
        super().__init__(broker, name)
        self.outcomes: list = []

    def finish(self, outcomes: list) -> list[str]:
        self.outcomes += outcomes
        return super().finish(outcomes)


@pytest.mark.parametrize(("cache_on", "cache_all"), [(True, False), (True, True), (False, True)])
def test_only_the_photos_of_jobs_that_ask_reach_the_cache_unless_it_keeps_all(cache_on, cache_all):
    broker = MemoryBroker()
    asked = broker.enqueue({"image": b"asked", "meta": {}}, cache=True)
    plain = broker.enqueue({"image": b"plain", "meta": {}})
    store = Finished(broker, "w1")
    settings = PipelineSettings(
        "w1", max_wait_ms=1.0, idle_wait_ms=20, burst=True, hash_images=cache_on, cache_all=cache_all
    )
    assert Pipeline(store, PassThrough(), Recorder(cap=8), settings, threading.Event()).run() == 2
    images = {o.job.job_id: o.image for o in store.outcomes}  # what the store would hash and cache
    assert images[asked] == (b"asked" if cache_on else None)
    assert images[plain] == (b"plain" if cache_on and cache_all else None)


def test_repeats_of_a_photo_in_a_batch_do_not_leave_the_decode_gate_counting_them_as_waiting():
    from worker.decode.cpu import Limits, Preprocess
    from worker.decode.gate import Gate
    from worker.decode.pool import ThreadDecoder

    from ..conftest import image_bytes

    gate = Gate(batch=4)

    class Gated(Recorder):  # a forward pass holds the gate, as Predictor.launch does
        def launch(self, pixels: list[bytes]) -> Answered:
            with gate.forward(len(pixels)):
                self.batches.append(pixels)
                return Answered([[("cat", 1.0)] for _ in pixels])

    broker = MemoryBroker()
    fill(broker, [image_bytes("cat.jpg")] * 8)  # the same photo: each batch of 4 runs it once
    decoder = ThreadDecoder(Preprocess(size=(8, 8), resize="stretch"), Limits(), 1, gate=gate)
    settings = PipelineSettings("w1", max_wait_ms=1.0, idle_wait_ms=20, burst=True)
    try:
        assert Pipeline(MemoryStore(broker, "w1"), decoder, Gated(cap=4), settings, threading.Event()).run() == 8
    finally:
        decoder.close()
    assert gate.ahead == 0  # every decoded image went into a batch: none is still counted as waiting
