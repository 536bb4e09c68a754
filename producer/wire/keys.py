"""Every Redis key and channel name the project uses: RQ's layout and our own, for producer and worker.

RQ 2.6-3.0 lays its keys out this way; ``tests/unit/test_rqkeys.py`` checks each name against RQ's
own classes, so an RQ upgrade that moves a key fails there and nowhere else. Nothing outside this
module spells a key; the store's scripts get every name or prefix from here (in ``KEYS`` or ``ARGV``).
"""

from __future__ import annotations

PREFIX = "rq"
JOB_PREFIX = f"{PREFIX}:job:"
WORKER_PREFIX = f"{PREFIX}:worker:"
EXECUTION_PREFIX = f"{PREFIX}:execution:"
EXECUTIONS_PREFIX = f"{PREFIX}:executions:"
# Our own keys live under rq:adclassify: (so one ACL pattern, rq:*, covers the whole queue world).
OWN_PREFIX = f"{PREFIX}:adclassify:"
# Marks on ids found in a queue's intermediate list (the reaper's "first seen" time).
SEEN_PREFIX = f"{OWN_PREFIX}seen:"
# The result cache (``producer.wire.cache``) and what each queue's workers announce they run.
CACHE_PREFIX = f"{OWN_PREFIX}cache:"
ANNOUNCE_PREFIX = f"{OWN_PREFIX}model:"
RESULTS_SUFFIX = ":results"
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


def canceled(name: str) -> str:
    """The canceled-job registry (RQ's ``CanceledJobRegistry``)."""
    return f"{PREFIX}:canceled:{name}"


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


def results_channel(queue: str) -> str:
    """The pub/sub channel on which results of ``queue`` are published."""
    return f"{queue}{RESULTS_SUFFIX}"


def results_stream(queue: str) -> str:
    """The durable results feed of ``queue``: a capped Redis Stream, one entry per final result, with
    fields ``job_id`` (text) and ``result`` (the same msgpack bytes as the channel's message)."""
    return f"{queue}{RESULTS_SUFFIX}:stream"


def announcement(queue: str) -> str:
    """What the workers of ``queue`` announce they run (model tag, precision, decode, top-k, cache TTL)."""
    return f"{ANNOUNCE_PREFIX}{queue}"
