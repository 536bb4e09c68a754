"""The producer's shared core on scripted replies (no server): what it sends to which shard, and what it
makes of the answers. ``Producer`` and ``AsyncProducer`` run exactly these procedures."""

from __future__ import annotations

import re
import zlib
from base64 import b64encode
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest
import redis
from redis.exceptions import NoScriptError

from producer.cancel import CancelCall, CancelOutcome, script
from producer.core import ProducerCore
from producer.errors import CannotCancel, JobFailed, JobNotFound, JobTimeout, QueueFull, RedisFull, ShardUnavailable
from producer.jobdata import JobOptions
from producer.ops import Batch, Call, Commit, Done, Offload, Op, Watch, advance
from producer.shards import rendezvous
from producer.wire import keys
from producer.wire.cache import announcement, compact, digest, key_for
from producer.wire.jobs import ImageTooLarge, ProtocolError
from producer.wire.results import make_result
from producer.wire.serializer import dumps, loads

NAMES = ["a:6379/0", "b:6379/0"]
ANNOUNCED = announcement("tiny@7", "fp32", "cpu", 5, ttl_s=600)


def run(procedure: Any, answer: Callable[[Op], Any]) -> tuple[Any, list[Op]]:
    """Run a procedure as a driver does, ``answer(op)`` standing in for Redis; its value and the ops sent."""
    sent: list[Op] = []
    op = advance(procedure, None, None)
    while not isinstance(op, Done):
        if isinstance(op, Offload):  # the procedure's own work, not sent: the sync driver runs it in place
            op = advance(procedure, op.work(), None)
            continue
        sent.append(op)
        try:
            reply, error = answer(op), None
        except redis.RedisError as exc:
            reply, error = None, exc
        op = advance(procedure, reply, error)
    return op.value, sent


def committed_ids(commit: Commit) -> list[str]:
    """The job ids a transaction queues (RQ's RPUSH of each id onto the queue)."""
    pushes = [c.args for c in commit.commands if c.args[0] == "RPUSH" and c.args[1] == keys.queue("classify")]
    return [job_id for args in pushes for job_id in args[2:]]


def test_enqueue_many_sends_one_transaction_per_shard_and_nothing_else():
    core = ProducerCore(NAMES, "classify", JobOptions())
    ids, sent = run(core.enqueue_many([b"img"] * 12), lambda op: True)
    assert all(isinstance(op, Commit) for op in sent) and sorted(op.shard for op in sent) == [0, 1]
    for commit in sent:
        assert sorted(committed_ids(commit)) == sorted(i for i in ids if rendezvous(NAMES, i) == commit.shard)


def test_jobs_by_reference_are_routed_like_any_job():
    core = ProducerCore(NAMES, "classify", JobOptions())
    urls = [f"https://images.example/{n}.jpg" for n in range(8)]
    ids, sent = run(core.enqueue_many(image_urls=urls), lambda op: True)
    assert len(ids) == 8 and sorted(i for op in sent for i in committed_ids(op)) == sorted(ids)


def test_a_bad_job_stops_the_call_before_anything_is_sent():
    core = ProducerCore(NAMES, "classify", JobOptions())
    with pytest.raises(ProtocolError):
        run(core.enqueue_many([b"a", b"b"], metas=[{}, {"when": object()}]), lambda op: pytest.fail(f"sent {op}"))


def test_an_unreachable_shard_is_named_with_the_ids_written_before_it():
    core = ProducerCore(NAMES, "classify", JobOptions())
    ids = [f"ad-{n}" for n in range(10)]

    def answer(op: Op) -> Any:
        if op.shard == 1:
            raise redis.ConnectionError("refused")
        return [0] * len(op.commands) if isinstance(op, Batch) else True

    with pytest.raises(ShardUnavailable) as down:
        run(core.enqueue_many([b"x"] * 10, job_ids=ids), answer)
    on_b = [i for i in ids if rendezvous(NAMES, i) == 1]
    assert down.value.shard == "b:6379/0" and set(on_b) <= set(down.value.not_enqueued)
    assert sorted(down.value.enqueued + down.value.not_enqueued) == sorted(ids)


def test_a_reply_lost_after_the_transaction_ran_is_found_written_and_the_call_succeeds():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    written: set[str] = set()

    def answer(op: Op) -> Any:
        if isinstance(op, Commit):
            written.update(committed_ids(op))
            raise redis.ConnectionError("connection reset after EXEC")  # Redis ran it; its reply was lost
        return [int(c.args[1].split(":")[-1] in written) for c in op.commands]  # EXISTS rq:job:<id>

    ids, sent = run(core.enqueue_many([b"x"] * 3), answer)
    assert set(ids) == written and isinstance(sent[-1], Batch)  # asked once more; not created twice


def test_a_shard_that_cannot_be_asked_again_lists_its_ids_as_not_enqueued():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())

    def answer(op: Op) -> Any:
        raise redis.ConnectionError("refused")

    with pytest.raises(ShardUnavailable) as down:
        run(core.enqueue_many([b"x"] * 3), answer)
    assert len(down.value.not_enqueued) == 3 and down.value.enqueued == []


def test_a_full_queue_on_one_shard_says_which_ids_the_other_shards_took():
    core = ProducerCore(NAMES, "classify", JobOptions(max_queue_length=100))
    ids = [f"ad-{n}" for n in range(10)]

    def answer(op: Op) -> Any:
        if isinstance(op, Batch):  # EXISTS of each chosen id, then LLEN: shard b is full
            return [0] * (len(op.commands) - 1) + [100 if op.shard == 1 else 0]
        return True

    with pytest.raises(QueueFull) as full:
        run(core.enqueue_many([b"x"] * 10, job_ids=ids), answer)
    on_b = [i for i in ids if rendezvous(NAMES, i) == 1]
    assert 0 < len(on_b) < 10 and full.value.not_enqueued == on_b
    assert full.value.enqueued == [i for i in ids if i not in on_b]


def test_caller_chosen_ids_are_watched_checked_and_kept_when_they_exist():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    ids, sent = run(core.enqueue_many([b"x"], job_ids=["ad-1"]), lambda op: [1] if isinstance(op, Batch) else None)
    assert ids == ["ad-1"] and [type(op) for op in sent] == [Watch, Batch]  # exists: nothing written
    assert sent[0].keys == (keys.job("ad-1"),)


def test_a_watched_id_created_meanwhile_makes_the_write_check_again():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    commits = iter([False, True])
    answer = {Watch: lambda op: None, Batch: lambda op: [0], Commit: lambda op: next(commits)}
    ids, sent = run(core.enqueue_many([b"x"], job_ids=["ad-1"]), lambda op: answer[type(op)](op))
    assert ids == ["ad-1"] and [type(op) for op in sent] == [Watch, Batch, Commit] * 2


def test_the_queue_limit_and_a_full_redis_are_the_producers_errors():
    core = ProducerCore(NAMES[:1], "classify", JobOptions(max_queue_length=5))
    with pytest.raises(QueueFull):
        run(core.enqueue_many([b"x"]), lambda op: [5])  # LLEN 5 + 1 > 5

    def out_of_memory(op: Op) -> Any:
        if isinstance(op, Commit):
            raise redis.OutOfMemoryError("OOM command not allowed")
        return [0]

    with pytest.raises(RedisFull):
        run(core.enqueue_many([b"x"]), out_of_memory)


def test_a_cache_hit_on_any_shard_is_answered_without_queueing_and_result_needs_no_redis():
    core = ProducerCore(NAMES, "classify", JobOptions())
    photo = b"photo"
    entry = key_for(digest(photo), loads(ANNOUNCED))
    numbers = compact(make_result("x", model="tiny@7", worker="w", timings_ms={}, meta={}, topk=[("cat", 0.9)]))

    def answer(op: Op) -> Any:
        if op.shard == 0:
            raise redis.ConnectionError("shard a is away")  # a miss there, not an error
        return ANNOUNCED if op.command.args[1] == keys.announcement("classify") else numbers

    job_id, sent = run(core.enqueue(photo, cache=True, meta={"ad": 1}), answer)
    assert (
        all(isinstance(op, Call) and op.command.args[0] == "GET" for op in sent) and sent[-1].command.args[1] == entry
    )
    result, sent = run(core.result(job_id), lambda op: pytest.fail(f"sent {op}"))
    assert result["cached"] is True and result["label"] == "cat" and result["meta"] == {"ad": 1} and sent == []
    assert (core.cache.hits, core.cache.misses) == (1, 0)


def test_cache_lookups_are_counted_for_the_web_backends_metrics():
    prometheus_client = pytest.importorskip("prometheus_client", reason="the metrics extra")

    def sample(outcome: str) -> float:
        name = "adclassify_producer_cache_lookups_total"
        return prometheus_client.REGISTRY.get_sample_value(name, {"outcome": outcome}) or 0.0

    def answer(found: bytes | None) -> Any:
        return lambda op: ANNOUNCED if op.command.args[1] == keys.announcement("classify") else found

    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    numbers = compact(make_result("x", model="tiny@7", worker="w", timings_ms={}, meta={}, topk=[("cat", 0.9)]))
    before = sample("hit"), sample("miss")
    run(core.cache.lookup("classify", digest(b"photo"), None, 1), answer(numbers))
    run(core.cache.lookup("classify", digest(b"other"), None, 1), answer(None))
    assert (sample("hit") - before[0], sample("miss") - before[1]) == (1.0, 1.0)


def test_no_cache_lookup_for_a_url_or_a_caller_chosen_id():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    _, sent = run(core.enqueue(image_url="https://images.example/a.jpg", cache=True), lambda op: True)
    assert [type(op) for op in sent] == [Commit]
    _, sent = run(core.enqueue(b"x", job_id="ad-1", cache=True), lambda op: [0] if isinstance(op, Batch) else True)
    assert [type(op) for op in sent] == [Watch, Batch, Commit] and core.cache.misses == 0


def test_result_of_an_unknown_job_times_out_saying_so():
    core = ProducerCore(NAMES, "classify", JobOptions())
    with pytest.raises(JobTimeout, match="no such job") as waited:
        run(core.result("ghost", timeout=0), lambda op: [None, None, None] if isinstance(op, Batch) else 0)
    assert waited.value.job_id == "ghost"


def script_reply(outcome: str, detail: str = "") -> Callable[[Op], Any]:
    return lambda op: [outcome.encode(), detail.encode()]


def test_cancel_is_one_script_call_on_the_jobs_shard_and_says_what_it_did():
    core = ProducerCore(NAMES, "classify", JobOptions())
    for answer, expected in (
        ("canceled", CancelOutcome.CANCELED),
        ("canceling", CancelOutcome.CANCELING),
        ("already_canceled", CancelOutcome.ALREADY_CANCELED),
        ("already_final", CancelOutcome.ALREADY_FINAL),
    ):
        outcome, sent = run(core.cancel("ad-1"), script_reply(answer, "x"))
        assert outcome is expected and bool(outcome) == (answer in ("canceled", "canceling"))
        (op,) = sent  # one round trip: nothing can come between what it reads and what it writes
        assert isinstance(op, Call) and op.shard == rendezvous(NAMES, "ad-1")
        keys_, argv = CancelCall.of("ad-1", "classify").wire()
        assert op.command.args == ("EVALSHA", script()[1], len(keys_), *keys_, *argv)


def test_cancel_sends_the_script_whole_when_the_server_lacks_it():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())

    def answer(op: Op) -> Any:
        if op.command.args[0] == "EVALSHA":
            raise NoScriptError("NOSCRIPT No matching script")
        return [b"canceled", b"queued"]

    outcome, sent = run(core.cancel("ad-1"), answer)
    assert outcome is CancelOutcome.CANCELED and [op.command.args[0] for op in sent] == ["EVALSHA", "EVAL"]
    assert sent[1].command.args[1] == script()[0]


def test_cancel_of_a_job_of_another_queue_runs_again_on_that_queues_keys():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    replies = iter([[b"other_queue", b"high"], [b"canceled", b"queued"]])
    outcome, sent = run(core.cancel("ad-1"), lambda op: next(replies))
    assert outcome is CancelOutcome.CANCELED
    assert keys.queue("high") in sent[1].command.args and keys.canceled("high") in sent[1].command.args


def test_cancel_of_no_job_or_against_a_misfit_key_raises():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    with pytest.raises(JobNotFound):
        run(core.cancel("ghost"), script_reply("not_found"))
    with pytest.raises(CannotCancel, match="rq:canceled:classify"):
        run(core.cancel("ad-1"), script_reply("wrong_type", "rq:canceled:classify"))
    with pytest.raises(CannotCancel, match="deferred"):
        run(core.cancel("ad-1"), script_reply("unsupported", "deferred"))


def test_the_cancel_script_declares_and_binds_the_calls_fields_in_wire_order():
    text = script()[0]
    declared = {m[1]: [n.strip() for n in m[2].split(",")] for m in re.finditer(r"^-- (KEYS|ARGV): (.*)$", text, re.M)}
    names = {
        label: [f.name for f in fields(CancelCall) if bool(f.metadata.get("keys")) == (label == "KEYS")]
        for label in ("KEYS", "ARGV")
    }
    assert declared == names
    for label, bound in names.items():
        assert f"local {', '.join(bound)} = unpack({label}, 1, {len(bound)})" in text


def test_result_of_a_canceled_job_answers_from_the_first_read_without_blocking():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    with pytest.raises(JobFailed) as failed:
        run(core.result("ad-1", timeout=30), lambda op: [None, b"canceled", None])
    assert failed.value.error["type"] == "canceled"


def test_result_reads_once_without_blocking_first_even_with_no_time_left():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    done = make_result("ad-1", model="m@1", worker="w", timings_ms={}, meta={}, topk=[("cat", 0.9)])
    entry = [[b"rq:results:ad-1", [(b"1-0", {b"type": b"1", b"return_value": b64encode(dumps(done))})]]]
    result, sent = run(core.result("ad-1", timeout=0), lambda op: [entry, b"finished", None])
    assert result["label"] == "cat" and len(sent) == 1 and "BLOCK" not in sent[0].commands[0].args


def test_result_of_a_requeued_job_skips_the_results_before_the_requeue():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    failed = {b"type": b"2", b"exc_string": b64encode(zlib.compress(b"JobError: fetch_error: down"))}
    done = make_result("ad-1", model="m@1", worker="w", timings_ms={}, meta={}, topk=[("cat", 0.9)])
    ok = {b"type": b"1", b"return_value": b64encode(dumps(done))}
    replies = iter(
        [
            [[[b"rq:results:ad-1", [(b"5-0", failed)]]], b"queued", b"5-0"],  # the old failure: history
            [[[b"rq:results:ad-1", [(b"9-0", ok)]]], b"finished", b"5-0"],  # this run's result
        ]
    )
    result, sent = run(core.result("ad-1", timeout=30), lambda op: next(replies))
    assert result["label"] == "cat" and len(sent) == 2
    assert sent[1].commands[0].args[-1] == b"5-0"  # read on after the history


def test_a_shard_that_is_down_stops_only_its_own_jobs():
    core = ProducerCore(NAMES, "classify", JobOptions())
    ids = sorted((f"ad-{n}" for n in range(10)), key=lambda i: rendezvous(NAMES, i))  # shard a's come first

    def answer(op: Op) -> Any:
        if op.shard == 0:
            raise redis.ConnectionError("refused")
        return [0] * len(op.commands) if isinstance(op, Batch) else True

    with pytest.raises(ShardUnavailable) as down:
        run(core.enqueue_many([b"x"] * 10, job_ids=ids), answer)
    on_a = [i for i in ids if rendezvous(NAMES, i) == 0]
    assert down.value.not_enqueued == on_a and down.value.enqueued == [i for i in ids if i not in on_a]
    assert down.value.ids == ids and down.value.shards == ["a:6379/0"]


def test_an_image_over_the_limit_is_refused_before_anything_is_sent():
    core = ProducerCore(NAMES, "classify", JobOptions(max_image_bytes=10))
    with pytest.raises(ImageTooLarge) as refused:
        run(core.enqueue_many([b"x", b"y" * 11]), lambda op: pytest.fail(f"sent {op}"))
    assert refused.value.error == {"type": "image_too_large", "message": "the image is 11 bytes, over the limit of 10"}


def test_live_workers_counts_members_whose_key_lives_and_none_for_a_shard_that_cannot_be_asked():
    core = ProducerCore(NAMES, "classify", JobOptions())

    def answer(op: Op) -> Any:
        if op.shard == 1:
            raise redis.ResponseError("NOPERM this user has no permissions to access one of the keys")
        if isinstance(op, Call):
            assert op.command.args == ("SMEMBERS", keys.queue_workers("classify"))
            return {b"rq:worker:a", b"rq:worker:b"}
        return [1, 0]

    counts, _ = run(core.live_workers(), answer)
    assert counts == {"a:6379/0": 1, "b:6379/0": None}
