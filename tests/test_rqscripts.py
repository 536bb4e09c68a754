"""The batch scripts leave Redis exactly as RQ's own per-job calls do (key by key), and survive SCRIPT FLUSH."""

from __future__ import annotations

import re
import time

import redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import now, utcformat
from rq.worker import WorkerStatus

from producer import Producer
from producer.protocol import make_result
from producer.serializer import MsgpackSerializer
from worker.rqbatch import STARTED_TTL_S, BatchWorker, Outcome, RQBatch

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


def setup(url: str) -> tuple[redis.Redis, RQBatch, str]:
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    queue = Queue("classify", connection=conn, serializer=MsgpackSerializer)
    worker = BatchWorker([queue], connection=conn, name="w1", serializer=MsgpackSerializer)
    worker.register_birth()
    (job_id,) = Producer(url).enqueue_many([b"image bytes"], job_ids=["job-1"])
    conn.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
    return conn, RQBatch(worker, queue), job_id


def rq_reference(url: str) -> tuple[dict, dict]:
    """Start and finish the job with RQ's own calls, as RQ's worker does; snapshot after each."""
    conn, rqb, job_id = setup(url)
    job = Job.fetch(job_id, connection=conn, serializer=MsgpackSerializer)
    with conn.pipeline() as pipe:
        pipe.lrem(rqb.intermediate_key, 1, job_id)
        execution = Execution.create(job, STARTED_TTL_S, pipeline=pipe, worker_name="w1")
        job.prepare_for_execution("w1", pipeline=pipe)
        pipe.persist(job.key)
        rqb.worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
        rqb.worker.heartbeat(rqb.worker.worker_ttl, pipeline=pipe)
        pipe.execute()
    ids = {job_id.encode(): b"J", execution.id.encode(): b"E"}
    started = snapshot(conn, ids)
    job.ended_at = now()
    result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 0.5)])
    with conn.pipeline() as pipe:
        pipe.hset(job.key, mapping={"status": JobStatus.FINISHED, "ended_at": utcformat(job.ended_at)})
        Result.create(job, Result.Type.SUCCESSFUL, 3600, return_value=result, worker_name="w1", pipeline=pipe,
                      execution_id=execution.id, execution_started_at=job.started_at,
                      execution_ended_at=job.ended_at)  # fmt: skip
        job.finished_job_registry.add(job, 3600, pipe)
        job.cleanup(3600, pipeline=pipe, remove_from_queue=False)
        execution.delete(job=job, pipeline=pipe)
        pipe.hincrby(rqb.worker.key, "successful_job_count", 1)
        rqb.worker.set_state(WorkerStatus.IDLE, pipeline=pipe)
        pipe.execute()
    return started, snapshot(conn, ids)


def ours(url: str, flush_scripts: bool = False) -> tuple[dict, dict]:
    conn, rqb, job_id = setup(url)
    if flush_scripts:
        rqb.scripts.load()  # load, then lose them
        conn.script_flush()
    (taken,) = rqb.start([job_id])
    ids = {job_id.encode(): b"J", taken.execution.id.encode(): b"E"}
    started = snapshot(conn, ids)
    if flush_scripts:
        conn.script_flush()
    result = make_result(job_id, model="m@1", worker="w1", timings_ms={}, meta={}, topk=[("a", 0.5)])
    rqb.finish([Outcome(taken, result)], started_at=taken.job.started_at)
    return started, snapshot(conn, ids)


def test_scripts_write_what_rq_writes(redis_url):
    ref_started, ref_finished = rq_reference(redis_url)
    our_started, our_finished = ours(redis_url)
    assert our_started == ref_started
    assert our_finished == ref_finished


def test_rq_api_reads_the_scripts_state(redis_url, conn):
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


def test_restore_job_matches_rq_restore(redis_url, conn):
    from worker.rqbatch import restore_job

    Producer(redis_url).enqueue_many([b"img"], job_ids=["job-2"], metas=[{"k": 1}])
    times = {"started_at": "2026-11-28T14:34:39.106913Z", "last_heartbeat": "2026-11-28T14:34:39Z"}
    conn.hset("rq:job:job-2", mapping=times)
    raw = conn.hgetall("rq:job:job-2")
    theirs = Job("job-2", connection=conn, serializer=MsgpackSerializer)
    theirs.restore(dict(raw))
    ours_ = Job("job-2", connection=conn, serializer=MsgpackSerializer)
    restore_job(ours_, dict(raw))
    assert vars(ours_) == vars(theirs) | {"log": ours_.log}
    assert ours_.kwargs == {"image": b"img", "meta": {"k": 1}} and ours_.started_at.microsecond == 106913
