"""The REQUEUE script's call (``producer/lua/requeue.lua``): RQ's ``FailedJobRegistry.requeue`` of one job, atomically.

RQ's own requeue reads the job in one round trip and writes in another, with nothing watched: two operators
(or the dashboard and this command) could both push the id, and the job would run twice. One script leaves no
such gap. The outcomes are the script header's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from .ops import Procedure
from .scripts import ScriptCall, key_field, load, run
from .wire import keys

REQUEUED = "requeued"


def rq_time(moment: datetime) -> str:
    """A time as RQ's ``utcformat`` writes it (``2026-05-01T12:00:00.123456Z``)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RequeueCall(ScriptCall):
    """REQUEUE's arguments, in wire order (the header of ``lua/requeue.lua`` names the same fields): the failed
    registry, the job, its result stream, the queue and RQ's set of queues in ``KEYS``; the id, the queue's name
    and the enqueue time (the client's clock, as RQ's requeue takes it) in ``ARGV``."""

    failed: str = key_field()
    job: str = key_field()
    results: str = key_field()
    queue: str = key_field()
    queues: str = key_field()
    job_id: str
    queue_name: str
    enqueued_at: str

    @classmethod
    def of(cls, job_id: str, queue: str, now: datetime | None = None) -> RequeueCall:
        """The call that puts ``job_id`` back on ``queue`` from its failed registry."""
        return cls(
            failed=keys.failed(queue),
            job=keys.job(job_id),
            results=keys.results(job_id),
            queue=keys.queue(queue),
            queues=keys.QUEUES,
            job_id=job_id,
            queue_name=queue,
            enqueued_at=rq_time(now or datetime.now(timezone.utc)),
        )


def script() -> tuple[str, str]:
    """The script's text, as shipped in the package, and its SHA-1 (what ``EVALSHA`` names)."""
    return load("requeue")


def run_requeue(shard: int, requeue: RequeueCall) -> Procedure[tuple[str, str]]:
    """One run of the script on ``shard`` (``EVALSHA``; ``EVAL`` when the server does not have it yet); its
    ``(outcome, detail)``."""
    return (yield from run(shard, "requeue", requeue))
