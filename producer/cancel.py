"""Cancellation with RQ's semantics: ``Producer.cancel(job_id)`` runs RQ's own ``Job.cancel`` (status
``canceled``, the job leaves its queue or registry and joins ``CanceledJobRegistry``), so RQ's
``Job.cancel()`` and ours have the same effect.

- A queued job never runs (it leaves the queue).
- A job a worker took but had not started yet is skipped by the start script (status canceled).
- A job already running is finished as ``ok: false``, ``error.type = "canceled"``, published and
  fed that way by the worker's finish script (RQ's cancel drops its started entry; the script reads
  the status). Its result stream gets a failure, so ``result()`` raises ``JobFailed``.
- ``result()`` of a job canceled before it ran raises ``JobFailed`` too (it checks the status while
  it waits), so it never hangs.

``AsyncProducer.cancel`` runs this same function in a thread, on a synchronous client of the job's
shard: RQ's ``Job.cancel`` is synchronous code, and it stays the one implementation.
"""

from __future__ import annotations

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from .errors import JobNotFound
from .wire.serializer import MsgpackSerializer

CANCELED_ERROR = {"type": "canceled", "message": "the job was canceled before it ran"}


def cancel(connection: redis.Redis, job_id: str) -> bool:
    """Cancel ``job_id``; True if it was canceled now, False if it already was. ``JobNotFound`` if no such job."""
    try:
        job = Job.fetch(job_id, connection=connection, serializer=MsgpackSerializer)
    except NoSuchJobError as exc:
        raise JobNotFound(job_id) from exc
    try:
        job.cancel()
    except InvalidJobOperation:  # already canceled: cancelling twice is not an error here
        return False
    return True
