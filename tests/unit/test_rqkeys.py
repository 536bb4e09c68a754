"""Every key name in producer.rqkeys is the one RQ's own classes build (an RQ upgrade that moves one fails here)."""

from __future__ import annotations

import fakeredis
from rq import Queue, Worker
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job
from rq.results import Result

from producer.wire import keys as rqkeys


def test_key_names_match_rqs_classes():
    conn = fakeredis.FakeRedis()
    queue = Queue("classify", connection=conn)
    job = Job.create("worker.tasks.classify", connection=conn, id="J")
    worker = Worker([queue], connection=conn, name="w1")
    assert rqkeys.job("J") == job.key
    assert (rqkeys.dependents("J"), rqkeys.dependencies("J")) == (job.dependents_key, job.dependencies_key)
    assert rqkeys.results("J") == Result.get_key("J")
    assert (rqkeys.queue("classify"), rqkeys.intermediate("classify")) == (queue.key, queue.intermediate_queue_key)
    assert rqkeys.started("classify") == queue.started_job_registry.key
    assert rqkeys.finished("classify") == queue.finished_job_registry.key
    assert rqkeys.failed("classify") == queue.failed_job_registry.key
    assert rqkeys.worker("w1") == worker.key
    assert rqkeys.worker_executions("w1") == WORKER_EXECUTIONS_KEY_TEMPLATE.format("w1")
    assert rqkeys.execution("J", "E") == Execution("E", "J", connection=conn).key
    assert rqkeys.executions("J") == ExecutionRegistry(job_id="J", connection=conn).key
    assert (Queue.redis_queues_keys, Worker.redis_workers_keys) == (rqkeys.QUEUES, rqkeys.WORKERS)
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    assert rqkeys.queue_workers("classify") == WORKERS_BY_QUEUE_KEY % "classify"
