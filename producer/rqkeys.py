"""Every RQ key name the project uses, in one torch-free module that the producer and the worker share.

RQ 2.6-3.0 lays its keys out this way; ``tests/contract/test_rqkeys.py`` checks each name against
RQ's own classes, so an RQ upgrade that moves a key fails there and nowhere else. Outside this
module and ``worker/store/``, nothing spells an ``rq:`` key.
"""

from __future__ import annotations

PREFIX = "rq"
JOB_PREFIX = f"{PREFIX}:job:"
WORKER_PREFIX = f"{PREFIX}:worker:"
EXECUTION_PREFIX = f"{PREFIX}:execution:"
EXECUTIONS_PREFIX = f"{PREFIX}:executions:"
# Our own marks on ids found in a queue's intermediate list (the reaper's "first seen" time).
SEEN_PREFIX = f"{PREFIX}:adclassify:seen:"
QUEUES = f"{PREFIX}:queues"
WORKERS = f"{PREFIX}:workers"


def job(job_id: str) -> str:
    """The job's hash."""
    return f"{JOB_PREFIX}{job_id}"


def dependents(job_id: str) -> str:
    """The set of jobs that wait for this one."""
    return f"{JOB_PREFIX}{job_id}:dependents"


def dependencies(job_id: str) -> str:
    """The set of jobs this one waits for (RQ spells it with a double colon)."""
    return f"{JOB_PREFIX}:{job_id}:dependencies"


def results(job_id: str) -> str:
    """The job's result stream (``Result`` entries)."""
    return f"{PREFIX}:results:{job_id}"


def queue(name: str) -> str:
    """The list of queued job ids."""
    return f"{PREFIX}:queue:{name}"


def intermediate(name: str) -> str:
    """RQ's intermediate list: ids moved off the queue and not yet started."""
    return f"{queue(name)}:intermediate"


def started(name: str) -> str:
    """The started-job registry (``job_id:execution_id`` members scored by expiry)."""
    return f"{PREFIX}:wip:{name}"


def finished(name: str) -> str:
    """The finished-job registry."""
    return f"{PREFIX}:finished:{name}"


def failed(name: str) -> str:
    """The failed-job registry."""
    return f"{PREFIX}:failed:{name}"


def worker(name: str) -> str:
    """A worker's hash (its heartbeat keeps it alive)."""
    return f"{WORKER_PREFIX}{name}"


def queue_workers(name: str) -> str:
    """The set of worker keys that serve a queue."""
    return f"{WORKERS}:{name}"


def worker_executions(name: str) -> str:
    """The set of a worker's current executions."""
    return f"{WORKER_PREFIX}{name}:executions"


def execution(job_id: str, execution_id: str) -> str:
    """One execution record of a job."""
    return f"{EXECUTION_PREFIX}{job_id}:{execution_id}"


def executions(job_id: str) -> str:
    """The job's execution registry."""
    return f"{EXECUTIONS_PREFIX}{job_id}"


def seen(job_id: str) -> str:
    """When the reaper first saw this id in an intermediate list."""
    return f"{SEEN_PREFIX}{job_id}"
