"""Cancellation: ``Producer.cancel(job_id)`` runs one atomic script (``producer/lua/cancel.lua``) that writes
what RQ 3.0's ``Job.cancel`` writes (status ``canceled``, the id off its queue and, for a running job, its
executions off the started registry, the id in ``CanceledJobRegistry``), so RQ's ``Job`` API and
rq-dashboard read the state they would after RQ's own cancel; the worker's scripts read it too.

RQ's ``Job.cancel`` reads the status in one round trip and writes in another, with nothing watched: a
worker starting the job in between finished it ok while cancel had said it was canceled. One script leaves
no such gap: a worker's take (``worker/store/lua/take.lua``) and finish (``finish.lua``) each come wholly
before or wholly after it.

- queued, or moved off the queue by a worker's blocking wait and not yet started: it never runs
  (``CancelOutcome.CANCELED``; the id also leaves the queue's intermediate list, so a reaper never gives
  it back);
- running: its worker's finish finds its started entry gone and the status canceled, and answers it
  ``ok: false``, ``error.type = "canceled"`` (published, fed, an RQ failure result) instead of ok
  (``CancelOutcome.CANCELING``);
- finished or failed already: left as it is (``ALREADY_FINAL``); canceled already: ``ALREADY_CANCELED``;
- no such job: ``JobNotFound``.

``result()`` of a canceled job raises ``JobFailed`` (``canceled``) at once (``producer.results``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .errors import CannotCancel, JobNotFound
from .ops import Procedure
from .scripts import ScriptCall, key_field, load, run
from .wire import keys

CANCELED_ERROR = {"type": "canceled", "message": "the job was canceled"}


class CancelOutcome(str, Enum):
    """What a cancel did. True (as a bool) when it canceled the job now, False when the job had already
    ended or been canceled, so ``if producer.cancel(job_id):`` reads as before."""

    CANCELED = "canceled"  # it had not started: it never will
    CANCELING = "canceling"  # it was running: its worker answers it ok: false, error.type "canceled"
    ALREADY_CANCELED = "already_canceled"  # canceled before: nothing changed
    ALREADY_FINAL = "already_final"  # it had finished or failed: nothing changed, result() answers as before

    def __bool__(self) -> bool:
        return self is CancelOutcome.CANCELED or self is CancelOutcome.CANCELING

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class CancelCall(ScriptCall):
    """CANCEL's arguments, in wire order (the header of ``lua/cancel.lua`` names the same fields):
    the job's keys, then its queue's, in ``KEYS``; the id and the queue's name in ``ARGV``."""

    job: str = key_field()
    executions: str = key_field()
    queue: str = key_field()
    intermediate: str = key_field()
    wip: str = key_field()
    canceled: str = key_field()
    job_id: str
    queue_name: str

    @classmethod
    def of(cls, job_id: str, queue: str) -> CancelCall:
        """The call that cancels ``job_id`` of ``queue``."""
        return cls(
            job=keys.job(job_id),
            executions=keys.executions(job_id),
            queue=keys.queue(queue),
            intermediate=keys.intermediate(queue),
            wip=keys.started(queue),
            canceled=keys.canceled(queue),
            job_id=job_id,
            queue_name=queue,
        )


def script() -> tuple[str, str]:
    """The script's text, as shipped in the package, and its SHA-1 (what ``EVALSHA`` names)."""
    return load("cancel")


def run_cancel(shard: int, cancel: CancelCall) -> Procedure[tuple[str, str]]:
    """One run of the script on ``shard`` (``EVALSHA``; ``EVAL`` when the server does not have it yet); its
    ``(outcome, detail)``."""
    return (yield from run(shard, "cancel", cancel))


def cancel_job(shard: int, job_id: str, queue: str) -> Procedure[CancelOutcome]:
    """Cancel ``job_id`` on ``shard`` (on its own queue when that is not ``queue``: one more run)."""
    outcome, detail = yield from run_cancel(shard, CancelCall.of(job_id, queue))
    if outcome == "other_queue":
        outcome, detail = yield from run_cancel(shard, CancelCall.of(job_id, detail))
    if outcome == "not_found":
        raise JobNotFound(job_id)
    if outcome == "wrong_type":
        raise CannotCancel(job_id, f"key {detail} is not of the type RQ gives it; nothing was written")
    if outcome == "unsupported":
        raise CannotCancel(job_id, f"its status is {detail!r}, which this producer does not cancel; nothing written")
    try:
        return CancelOutcome(outcome)
    except ValueError as exc:  # the script answers only the outcomes above
        raise CannotCancel(job_id, f"the cancel script answered {outcome!r} ({detail!r})") from exc
