"""The producer's own work and its edges: what an asyncio producer builds off the event loop (``Offload``), a
shard that refuses with an error of its own, a cache hit's checks (procedures run against stand-in replies)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from producer.core import OFFLOAD_BYTES, OFFLOAD_JOBS, ProducerCore
from producer.drivers import AsyncDriver, SyncDriver
from producer.errors import ShardRefused
from producer.jobdata import JobOptions
from producer.ops import Batch, Commit, Offload, Op, advance
from producer.shards import rendezvous
from producer.wire import keys
from producer.wire.cache import announcement
from producer.wire.jobs import ProtocolError
from producer.wire.serializer import loads

from .test_producer_core import NAMES, committed_ids, run

ANNOUNCED = announcement("tiny@7", "fp32", "cpu", 5, ttl_s=600)


def first_op(procedure: Any) -> Op:
    op = advance(procedure, None, None)
    procedure.close()
    return op


@pytest.mark.parametrize(
    ("images", "offloaded"),
    [
        ([b"x" * 1000], False),  # the common web request: one photo in memory, built in place
        ([b"x" * 1000] * OFFLOAD_JOBS, False),
        ([b"x" * 1000] * (OFFLOAD_JOBS + 1), True),  # RQ builds each job in Python
        ([b"x" * (OFFLOAD_BYTES + 1)], True),  # packing and copying a large image
        (["a-path.jpg"], True),  # a file to read
    ],
)
def test_files_many_jobs_and_large_images_are_built_as_offloaded_work(images, offloaded):
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    assert isinstance(first_op(core.enqueue_many(images)), Offload) is offloaded


def test_a_cached_enqueue_of_a_file_reads_it_off_the_loop_once_and_queues_the_bytes_it_hashed(tmp_path: Path):
    photo = tmp_path / "ad.jpg"
    photo.write_bytes(b"the photo that was hashed")
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    procedure = core.enqueue(photo, cache=True)
    op = advance(procedure, None, None)
    assert isinstance(op, Offload)
    op = advance(procedure, op.work(), None)
    photo.write_bytes(b"a later write to the same file")  # between the lookup and the write
    sent = []
    while not isinstance(op, Commit):
        sent.append(op)
        reply = ANNOUNCED if op.command.args[1] == keys.announcement("classify") else None  # a miss
        op = advance(procedure, reply, None)
    assert len(sent) == 2  # the announcement and the photo's entry
    (args,) = [c.args for c in op.commands if c.args[0] == "HSET" and "data" in c.args]  # RQ's HSET of the job
    assert loads(args[args.index("data") + 1])[3]["image"] == b"the photo that was hashed"


def test_a_cache_lookup_checks_the_meta_as_the_enqueue_of_a_miss_would():
    core = ProducerCore(NAMES[:1], "classify", JobOptions())
    with pytest.raises(ProtocolError, match="meta must be a map"):
        run(core.enqueue(b"photo", meta=["not", "a", "map"], cache=True), lambda op: pytest.fail(f"sent {op}"))


def test_a_shard_that_refuses_stops_only_its_own_jobs_and_says_which():
    core = ProducerCore(NAMES, "classify", JobOptions())
    ids = sorted((f"ad-{n}" for n in range(10)), key=lambda i: rendezvous(NAMES, i))  # shard a's come first
    written: list[str] = []

    def answer(op: Op) -> Any:
        if op.shard == 0:
            raise redis.ResponseError("NOPERM User producer has no permissions to run the 'rpush' command")
        if isinstance(op, Batch):  # do the caller's ids exist?
            return [0] * len(op.commands)
        written.extend(committed_ids(op) if isinstance(op, Commit) else [])
        return True

    with pytest.raises(ShardRefused) as refused:
        run(core.enqueue_many([b"x"] * 10, job_ids=ids), answer)
    on_a = [i for i in ids if rendezvous(NAMES, i) == 0]
    assert refused.value.not_enqueued == on_a and refused.value.enqueued == [i for i in ids if i not in on_a]
    assert sorted(written) == sorted(refused.value.enqueued)  # shard b got its jobs after a refused
    assert isinstance(refused.value, redis.ResponseError) and "NOPERM" in str(refused.value)


def offloaded_thread() -> Any:
    thread = yield Offload(threading.get_ident)
    return thread


def failing_work() -> Any:
    try:
        yield Offload(lambda: Path("/nonexistent/ad.jpg").read_bytes())
    except FileNotFoundError:
        return "thrown in"
    return "not thrown"


def test_the_asyncio_driver_runs_offloaded_work_in_a_thread_and_the_sync_driver_in_place():
    main = threading.get_ident()
    assert SyncDriver([]).run(offloaded_thread()) == main
    assert asyncio.run(AsyncDriver([]).run(offloaded_thread())) != main
    assert SyncDriver([]).run(failing_work()) == "thrown in"
    assert asyncio.run(AsyncDriver([]).run(failing_work())) == "thrown in"
