"""The Redis store leaves Redis exactly as RQ's own per-job calls do (key by key), and survives SCRIPT FLUSH."""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import replace

import pytest
import redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import now, utcformat
from rq.worker import WorkerStatus

from producer import JobOptions, Producer
from producer.wire.results import exc_string_for, make_result
from producer.wire.serializer import MsgpackSerializer
from worker.store import Outcome
from worker.store.rq import RedisStore
from worker.store.rqcalls import STARTED_TTL_S

from ..conftest import image_bytes

TIME = re.compile(rb"^\d{4}-\d\d-\d\dT[\d:.]+Z$|^\d{10}(\.\d+)?$")


def _norm(value: bytes, ids: dict[bytes, bytes]) -> bytes:
    for real, alias in ids.items():
        value = value.replace(real, alias)
    return b"<time>" if TIME.match(value) else value


def snapshot(conn: redis.Redis, ids: dict[bytes, bytes]) -> dict:
    """Every key: normalised name, type, TTL bucket and contents (ids and times replaced)."""
    state = {}
    for key in conn.keys("*"):
        if key.startswith(b"rq:workers") or key == b"rq:queues":
            continue
        kind, ttl = conn.type(key), conn.ttl(key)
        name = _norm(key, ids)
        if kind == b"hash":
            body = {f: _norm(v, ids) for f, v in conn.hgetall(key).items() if f not in (b"total_working_time",)}
            if b"data" in body:  # RQ re-compresses a job's data when it saves it; compare the call itself
                body[b"data"] = _call(body[b"data"])
            if key.startswith(b"rq:worker:"):
                body = {f: v for f, v in body.items() if f in (b"state", b"successful_job_count", b"failed_job_count")}
        elif kind == b"zset":
            members = conn.zrange(key, 0, -1, withscores=True)
            body = sorted((_norm(m, ids), round(s - time.time(), -1)) for m, s in members)
        elif kind == b"set":
            body = sorted(_norm(m, ids) for m in conn.smembers(key))
        elif kind == b"stream":
            body = [{f: _norm(v, ids) for f, v in fields.items()} for _, fields in conn.xrange(key)]
        else:
            body = [_norm(v, ids) for v in conn.lrange(key, 0, -1)] if kind == b"list" else None
        state[name] = (kind, -1 if ttl < 0 else round(ttl, -1), body)
    return state


def _call(data: bytes) -> bytes:
    """A job's data field as the call it holds: zlib-compressed (RQ's) or plain (both are valid)."""
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data


def setup(url: str, deps: bool = False, **options) -> tuple[redis.Redis, RedisStore, str]:
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    store = RedisStore(conn, "classify", "w1")
    store.register()
    producer = Producer(url, options=JobOptions(**options)) if options else Producer(url)
    (job_id,) = producer.enqueue_many([b"image bytes"], job_ids=["job-1"])
    if deps:  # a job others depend on, that depended on one (RQ's keys for them; our producer writes neither)
        job = Job(job_id, connection=conn)
        conn.sadd(job.dependents_key, "job-2")
        conn.sadd(job.dependencies_key, "job-0")
    return conn, store, job_id


def rq_start(conn: redis.Redis, store: RedisStore, job_id: str) -> tuple[Job, Execution]:
    """Start the job with RQ's own calls, as RQ's worker does."""
    conn.lmove("rq:queue:classify", "rq:queue:classify:intermediate", "LEFT", "RIGHT")
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    with conn.pipeline() as pipe:
        pipe.lrem("rq:queue:classify:intermediate", 1, job_id)
        execution = Execution.create(job, STARTED_TTL_S, pipeline=pipe, worker_name="w1")
        job.prepare_for_execution("w1", pipeline=pipe)
        pipe.persist(job.key)
        store.rq_worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        store.rq_worker.heartbeat(store.rq_worker.worker_ttl, pipeline=pipe)
        pipe.execute()
    return job, execution


def rq_reference(url: str, kind: str = "ok", deps: bool = False, **options) -> tuple[dict, dict]:
    """Start and end the job with RQ's own calls; snapshot after each."""
    conn, store, job_id = setup(url, deps, **options)
    job, execution = rq_start(conn, store, job_id)
    ids = {job_id.encode(): b"J", execution.id.encode(): b"E"}
    started = snapshot(conn, ids)
    job.ended_at = now()
    worker = store.rq_worker
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    if kind == "ok":
        result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 0.5)])
        with conn.pipeline() as pipe:
            pipe.hset(job.key, mapping={"status": JobStatus.FINISHED, "ended_at": utcformat(job.ended_at)})
            Result.create(
                job,
                Result.Type.SUCCESSFUL,
                job.result_ttl,
                return_value=result,
                worker_name="w1",
                pipeline=pipe,
                execution_id=execution.id,
                execution_started_at=job.started_at,
                execution_ended_at=job.ended_at,
            )
            if job.result_ttl != 0:  # as RQ's worker does
                job.finished_job_registry.add(job, job.result_ttl, pipe)
            job.cleanup(job.result_ttl, pipeline=pipe, remove_from_queue=False)
            execution.delete(job=job, pipeline=pipe)
            pipe.hincrby(worker.key, "successful_job_count", 1)
            worker.set_state(WorkerStatus.IDLE, pipeline=pipe)
            pipe.execute()
    else:
        if kind == "fail":
            job.retries_left = 0
        worker.handle_job_failure(job, queue, exc_string=exc_string_for(ERROR), execution=execution)
        worker.set_state(WorkerStatus.IDLE)
    return started, snapshot(conn, ids)


ERROR = {"type": "unsupported_image", "message": "not an image"}


def ours(url: str, kind: str = "ok", flush_scripts: bool = False, deps: bool = False, **options) -> tuple[dict, dict]:
    conn, store, job_id = setup(url, deps, **options)
    if flush_scripts:
        conn.script_flush()
    (job,) = store.take(1, 1.0)
    ids = {job_id.encode(): b"J", job.execution_id.encode(): b"E"}
    started = snapshot(conn, ids)
    if flush_scripts:
        conn.script_flush()
    if kind == "ok":
        result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 0.5)])
    else:
        result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, error=ERROR)
        job = replace(job, retries_left=0) if kind == "fail" else job
    store.finish([Outcome(job, result, retry=kind == "retry")])
    return started, snapshot(conn, ids)


@pytest.mark.parametrize("kind", ["ok", "fail", "retry"])
def test_the_store_writes_what_rq_writes(redis_url, kind):
    ref_started, ref_ended = rq_reference(redis_url, kind)
    our_started, our_ended = ours(redis_url, kind)
    assert our_started == ref_started
    if kind == "ok":  # a deliberate difference: a finished job keeps its call without the image
        assert _data(our_ended) != _data(ref_ended)
        _data(our_ended, drop=True), _data(ref_ended, drop=True)
    feed = our_ended.pop(b"classify:results:stream", None)  # and our durable results feed, beside RQ's keys
    assert (feed is None) == (kind == "retry")  # a final result is fed; a retry is not final
    assert our_ended == ref_ended


def _data(snapshot: dict, drop: bool = False) -> bytes:
    fields = snapshot[b"rq:job:J"][2]
    return fields.pop(b"data") if drop else fields[b"data"]


def test_a_finished_job_releases_its_image_and_rqs_job_api_still_reads_it(redis_url, conn):
    photo = image_bytes("cat.jpg")
    (job_id,) = Producer(redis_url).enqueue_many([photo], metas=[{"ad": 7}])
    store = RedisStore(conn, "classify", "w1")
    store.register()
    (job,) = store.take(1, 1.0)
    result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={"ad": 7}, topk=[("a", 0.5)])
    store.finish([Outcome(job, result)])
    fetched = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    assert fetched.get_status() == JobStatus.FINISHED and fetched.return_value()["meta"] == {"ad": 7}
    assert fetched.kwargs == {"meta": {"ad": 7}} and fetched.func_name == "worker.tasks.classify"
    kept = conn.memory_usage(Job.key_for(job_id)) + conn.memory_usage(f"rq:results:{job_id}")
    assert len(photo) > 8000 and kept <= 8 * 1024, kept


@pytest.mark.parametrize("ttl", [0, -1])
def test_unusual_result_ttls_write_what_rq_writes(redis_url, ttl):
    ref = rq_reference(redis_url, "ok", result_ttl_s=ttl)[1]
    mine = ours(redis_url, "ok", result_ttl_s=ttl)[1]
    for snapshot in (ref, mine):  # the image-less data (see above) where the job is kept at all
        if b"rq:job:J" in snapshot:
            _data(snapshot, drop=True)
    assert mine.pop(b"classify:results:stream")  # the durable feed (see above)
    assert mine == ref


def test_rq_api_reads_the_stores_state(redis_url, conn):
    ours(redis_url)
    job = Job.fetch("job-1", connection=conn, serializer=MsgpackSerializer)
    assert job.get_status() == JobStatus.FINISHED and job.return_value()["label"] == "a"
    assert job.worker_name == "w1" and job.started_at <= job.ended_at
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    assert queue.finished_job_registry.get_job_ids() == ["job-1"] and queue.started_job_registry.count == 0
    (result,) = job.results()
    assert result.type == Result.Type.SUCCESSFUL and result.execution_id


def test_scripts_are_reloaded_after_script_flush(redis_url, conn):
    _, finished = ours(redis_url, flush_scripts=True)
    assert Job.fetch("job-1", connection=conn, serializer=MsgpackSerializer).get_status() == JobStatus.FINISHED
    assert finished[b"rq:finished:classify"][2][0][0] == b"J"


# (a failure kept for ever is not compared: RQ's FailedJobRegistry.add scores it -1, its other registries
# '+inf'; ours '+inf' there too)
@pytest.mark.parametrize(("kind", "ttl"), [("ok", 500), ("ok", -1), ("fail", 500)])
def test_a_jobs_dependents_and_dependencies_are_kept_as_rq_keeps_them(redis_url, kind, ttl):
    ref = rq_reference(redis_url, kind, deps=True, result_ttl_s=ttl, failure_ttl_s=ttl)[1]
    mine = ours(redis_url, kind, deps=True, result_ttl_s=ttl, failure_ttl_s=ttl)[1]
    for snapshot in (ref, mine):
        _data(snapshot, drop=True)
    mine.pop(b"classify:results:stream")
    assert mine[b"rq:job:J:dependents"][1] == (-1 if ttl < 0 else ttl)  # kept with the job
    assert mine == ref
