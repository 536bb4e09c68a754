"""``python -m producer requeue --failed [--error TYPE] [--older-than S] [--limit N] [--dry-run]``: put failed jobs back
on their queue (RQ's failed registry ``rq:failed:<queue>``, every shard), selected by error type.

A failed job's type is its latest RQ result's (``JobError: <type>: <message>``, read by
``producer.wire.results.parse_exc_string``; for a plain ``rq worker``, the exception's class name). Failures
that would fail the same way again (``DETERMINISTIC``) are never re-queued unless ``--error`` names their type;
without ``--error`` every other type is (what the worker retries itself, ``fetch_error``, ``model_error`` and
``decode_error``, once its retries ran out, and anything unknown). Each job is re-queued by one atomic script
(``producer.requeue_call``), as RQ's ``FailedJobRegistry.requeue`` would. ``--dry-run`` reads only.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from .client import Producer
from .drivers import SyncDriver
from .errors import JobFailed, ScriptNotLoaded
from .ops import Batch, Procedure, call, command
from .requeue_call import REQUEUED, RequeueCall, run_requeue
from .results import final_result
from .wire import keys
from .wire.jobs import ProtocolError
from .wire.printable import shown

# The worker's error types that a second run would answer the same way (worker/errors.py, worker/jobs.py,
# worker/decode/, the store's scripts): bad input, refused by policy, past its deadline, lost with its
# worker too often, canceled, or gone. docs/backfill.md lists them with the reason for each.
DETERMINISTIC = frozenset(
    {
        "bad_request",  # arguments that break the contract
        "bad_job_data",  # data that cannot be read (pickle, a zlib bomb)
        "forbidden_function",  # a function outside the allow-list
        "bad_image",
        "unsupported_image",  # not an image, or a format, a file or a decoder crash it cannot get past
        "image_too_large",  # over --max-image-bytes or --max-pixels
        "decode_timeout",  # an image that takes longer to decode than the limit will again
        "forbidden_url",  # outside --fetch-allow / --fetch-root: a policy, not a fault
        "fetch_failed",  # a 4xx, not an image, a missing file
        "expired",  # its deadline is in its arguments: past already
        "poison",  # it killed its worker --max-deliveries times
        "canceled",
        "job_gone",
    }
)
PAGE = 200  # failed ids read in one round trip
UNKNOWN = {"type": "unknown", "message": "no failure is recorded for this job"}


@dataclass(frozen=True)
class Failure:
    """A failed job as its records say: its status (None: the job is gone), error and when it failed (Unix
    time, Redis's clock: its result's id; None when unknown)."""

    job_id: str
    shard: int
    status: str | None
    error: dict[str, str]
    failed_at: float | None


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def failure_of(shard: int, job_id: str, status: Any, ended_at: Any, latest: Sequence[Any]) -> Failure:
    """A failure from the job's status and ``ended_at`` fields and its latest RQ result (XREVRANGE reply)."""
    error, failed_at = dict(UNKNOWN), None
    if ended_at:
        try:
            failed_at = datetime.fromisoformat(str(_text(ended_at))).timestamp()
        except ValueError:
            failed_at = None
    if latest:
        entry_id, payload = latest[0]
        failed_at = int(str(_text(entry_id)).split("-")[0]) / 1000
        try:
            final_result(job_id, entry_id if isinstance(entry_id, bytes) else entry_id.encode(), payload)
        except JobFailed as exc:
            error = {"type": str(exc.error.get("type")), "message": str(exc.error.get("message"))}
        except (ProtocolError, ValueError, KeyError, TypeError):  # not a result RQ or we wrote: unknown
            pass
    return Failure(job_id, shard, _text(status), error, failed_at)


@dataclass(frozen=True)
class Selection:
    """Which failures to re-queue: the types asked for (none: every type not deterministic), a minimum age."""

    errors: frozenset[str] = frozenset()
    older_than_s: float | None = None

    def skip_reason(self, failure: Failure, now: float) -> str | None:
        """Why ``failure`` is not re-queued, or None when it is."""
        kind = failure.error["type"]
        if failure.status is None:
            return "gone (its job expired)"
        if self.errors and kind not in self.errors:
            return "another type than --error names"
        if not self.errors and kind in DETERMINISTIC:
            return "deterministic (name the type with --error to re-queue it anyway)"
        if self.older_than_s is not None and (failure.failed_at is None or now - failure.failed_at < self.older_than_s):
            return f"failed less than {self.older_than_s:g} s ago"
        return None


def read_failures(shard: int, queue: str, start: int) -> Procedure[list[Failure]]:
    """One page of the failed registry (in its order: soonest to expire first), with each job's records."""
    ids = [_text(i) for i in (yield call(shard, "ZRANGE", keys.failed(queue), start, start + PAGE - 1))]
    if not ids:
        return []
    asks = []
    for job_id in ids:
        asks += [command("HGET", keys.job(job_id), "status"), command("HGET", keys.job(job_id), "ended_at")]
        asks.append(command("XREVRANGE", keys.results(job_id), "+", "-", "COUNT", 1))
    replies = yield Batch(shard, tuple(asks))
    return [failure_of(shard, job_id, *replies[3 * i : 3 * i + 3]) for i, job_id in enumerate(ids)]


def select(
    driver: SyncDriver, shards: int, queue: str, selection: Selection, limit: int | None
) -> tuple[list[Failure], Counter[tuple[str, str]]]:
    """The failures to re-queue, oldest first over every shard (at most ``limit``: each shard's oldest ``limit``
    by its registry's order, merged by when each failed), and how many were skipped, by (reason, type)."""
    chosen: list[Failure] = []
    skipped: Counter[tuple[str, str]] = Counter()
    now = time.time()
    for shard in range(shards):
        mine: list[Failure] = []
        start = 0
        while limit is None or len(mine) < limit:
            page = driver.run(read_failures(shard, queue, start))
            if not page:
                break
            start += len(page)
            for failure in page:
                reason = selection.skip_reason(failure, now)
                if reason is not None:
                    skipped[(reason, failure.error["type"])] += 1
                elif limit is None or len(mine) < limit:
                    mine.append(failure)
        chosen += mine
    chosen.sort(key=lambda f: (f.failed_at is None, f.failed_at or 0.0))  # unknown times last
    return (chosen if limit is None else chosen[:limit]), skipped


def describe(failure: Failure, now: float) -> str:
    """``<id>  <type>: <message>  (failed N s ago)``."""
    age = (
        f"failed {now - failure.failed_at:.0f} s ago" if failure.failed_at is not None else "failed at an unknown time"
    )
    error = failure.error  # written by whoever may enqueue (an id, a message): escaped, one line each
    return f"{shown(failure.job_id)}  {shown(str(error['type']))}: {shown(str(error['message'])[:160])}  ({age})"


def skipped_text(skipped: Counter[tuple[str, str]]) -> list[str]:
    """One line per reason: how many, by type."""
    reasons: dict[str, Counter[str]] = {}
    for (reason, kind), n in skipped.items():
        reasons.setdefault(reason, Counter())[kind] += n
    lines = []
    for reason, kinds in sorted(reasons.items()):
        by_kind = ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())
        lines.append(f"skipped {sum(kinds.values())}: {reason} ({by_kind})")
    return lines


def requeue(producer: Producer, args: argparse.Namespace) -> int:
    """Select, then re-queue (or, with ``--dry-run``, say what would be): 0, or 1 when a job could not be."""
    driver = SyncDriver([shard.connection for shard in producer.shards])
    queue = producer.queue.name
    asked = frozenset(kind.strip() for item in args.error or [] for kind in item.split(",") if kind.strip())
    selection = Selection(asked, args.older_than)
    chosen, skipped = select(driver, len(producer.shards), queue, selection, args.limit)
    now, refused = time.time(), 0
    for failure in chosen:
        if args.dry_run:
            print(f"would requeue {describe(failure, now)}")
            continue
        outcome, detail = driver.run(run_requeue(failure.shard, RequeueCall.of(failure.job_id, queue)))
        if outcome == REQUEUED:
            print(f"requeued {describe(failure, now)}")
        else:
            refused += 1
            print(f"not requeued {shown(failure.job_id)}: {outcome}{f' ({shown(detail)})' if detail else ''}")
    done = "would be re-queued (dry run: nothing changed)" if args.dry_run else "re-queued"
    print(f"{len(chosen) - refused} failed job(s) of queue {queue} {done}", file=sys.stderr)
    if args.limit is not None and len(chosen) >= args.limit:
        print(f"stopped at --limit {args.limit}: there may be more", file=sys.stderr)
    for line in skipped_text(skipped):
        print(line, file=sys.stderr)
    return 1 if refused else 0


def main(args: argparse.Namespace) -> int:
    """``python -m producer requeue``: 0 done, 1 a selected job could not be re-queued, 2 it could not run."""
    if args.limit is not None and args.limit < 1:
        print("python -m producer requeue: --limit must be at least 1", file=sys.stderr)
        return 2
    producer = Producer(args.redis_url, queue=args.queue)
    try:
        return requeue(producer, args)
    except redis.exceptions.NoPermissionError as exc:
        print(f"python -m producer requeue: {exc} (see docs/security.md for the producer's ACL)", file=sys.stderr)
        return 2
    except ScriptNotLoaded as exc:  # no worker of this version has registered since Redis started
        print(f"python -m producer requeue: {exc}", file=sys.stderr)
        return 2
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"python -m producer requeue: cannot reach Redis: {exc}", file=sys.stderr)
        return 2
    finally:
        producer.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``requeue``'s arguments."""
    p = sub.add_parser(
        "requeue",
        help="put failed jobs back on their queue, by error type (never deterministic ones unless named)",
        description="Re-queue jobs from RQ's failed registry of --queue (every shard). Without --error: every "
        "failure but the deterministic ones (bad input, policy refusals, expired, poison; see docs/backfill.md). "
        "With --error: exactly the types named, deterministic or not.",
    )
    p.add_argument("--failed", action="store_true", required=True, help="take the jobs from the failed registry")
    p.add_argument(
        "--error",
        action="append",
        metavar="TYPE",
        help="only failures of this error type (repeat it, or a comma list), e.g. fetch_error",
    )
    p.add_argument("--older-than", type=float, metavar="S", help="only jobs that failed at least S seconds ago")
    p.add_argument("--limit", type=int, metavar="N", help="re-queue at most N jobs")
    p.add_argument("--dry-run", action="store_true", help="print what would be re-queued; change nothing")
