"""Exceptions a producer raises."""

from __future__ import annotations

from typing import Any

import redis


class ProducerError(Exception):
    """Base class of the producer's errors. One an ``enqueue_many`` raises after writing on some shards (several
    shards: the others still got their jobs) says which of the call's ids were written (``enqueued``) and which
    not (``not_enqueued``); None where the call wrote nothing anywhere."""

    enqueued: list[str] | None = None
    not_enqueued: list[str] | None = None


class JobTimeout(ProducerError, TimeoutError):
    """No final result arrived for a job within the time asked for."""

    def __init__(self, job_id: str, timeout_s: float, detail: str = "") -> None:
        self.job_id = job_id
        self.timeout_s = timeout_s
        super().__init__(f"no result for job {job_id} within {timeout_s:g} s{detail}")


class JobFailed(ProducerError):
    """The job ended failed; ``error`` is ``{"type", "message"}`` and ``result`` the result map."""

    def __init__(self, job_id: str, error: dict[str, str], result: dict[str, Any] | None = None) -> None:
        self.job_id = job_id
        self.error = error
        self.result = result
        super().__init__(f"job {job_id} failed: {error.get('type')}: {error.get('message')}")


class QueueFull(ProducerError):
    """The queue holds ``length`` jobs; adding ``adding`` more would pass the producer's ``limit``."""

    def __init__(self, queue: str, length: int, adding: int, limit: int) -> None:
        self.queue, self.length, self.adding, self.limit = queue, length, adding, limit
        super().__init__(f"queue {queue!r} is full: {length} waiting + {adding} > limit {limit}; retry later")


class RedisFull(QueueFull):
    """Redis refused the jobs: it reached ``maxmemory`` (RQ's recommended ``noeviction`` policy).
    Nothing of the call was written (one transaction). ``reason`` is Redis's own message; retry later,
    once workers have drained jobs (finishing a job frees its image), or give Redis more memory."""

    def __init__(self, queue: str, adding: int, reason: str) -> None:
        ProducerError.__init__(self, f"queue {queue!r} is full: Redis refused {adding} job(s) ({reason}); retry later")
        self.queue, self.adding, self.reason = queue, adding, reason
        self.length = self.limit = None  # not a producer-side limit


class ShardUnavailable(ProducerError, redis.ConnectionError):
    """One shard's Redis could not be reached: its jobs are not known to be written (never moved to another shard).

    The other shards still got theirs: ``enqueued`` are the ids known written, ``not_enqueued`` the ids of the
    shards that could not be reached (``shards``; ``shard`` is the first) not found written when the shard
    was asked once more (a reply lost after Redis ran the transaction shows its ids as enqueued), or, with
    ``wait_replicas``, every id of those shards (written or not, none is known to be on a replica); ``ids``
    every id of the call in the order of its images. A shard that could not be asked either may still have
    them: enqueue ``not_enqueued`` again with ``job_ids=`` those ids (creation is create-if-absent: none is
    created twice). A ``redis.ConnectionError`` too, whether the cause was a refused connection or a timeout."""

    def __init__(
        self,
        shard: str,
        reason: str,
        enqueued: list[str],
        not_enqueued: list[str],
        *,
        ids: list[str] | None = None,
        shards: list[str] | None = None,
    ) -> None:
        self.shard, self.reason, self.enqueued, self.not_enqueued = shard, reason, enqueued, not_enqueued
        self.ids = ids if ids is not None else [*enqueued, *not_enqueued]  # every id of the call, in its order
        self.shards = shards or [shard]  # every shard that could not be reached (``shard`` is the first)
        more = f" (and {len(self.shards) - 1} more shard(s))" if len(self.shards) > 1 else ""
        super().__init__(
            f"shard {shard} is unavailable ({reason}){more}: {len(not_enqueued)} job(s) not enqueued, "
            f"{len(enqueued)} enqueued on other shards"
        )

    def __repr__(self) -> str:  # redis's errors show only their kind
        return f"ShardUnavailable({str(self)!r})"


class ShardRefused(ProducerError, redis.ResponseError):
    """A shard's Redis refused an ``enqueue_many``'s write with an error of its own (``NOPERM`` after an ACL
    change, ``MISCONF`` when it cannot persist, ``WRONGTYPE`` on the queue's key...): ``reason`` is its message.
    None of that shard's jobs counts as enqueued (``not_enqueued``; a refusal inside the transaction may have
    left some of their job hashes written but not queued); the other shards still got theirs (``enqueued``).
    A ``redis.ResponseError`` too, as the error it stands for."""

    def __init__(self, shard: str, reason: str) -> None:
        self.shard, self.reason = shard, reason
        super().__init__(f"shard {shard} refused the jobs: {reason}")


class NotReplicated(ProducerError):
    """The jobs were written on the primary, but fewer than ``wanted`` replicas acknowledged them within
    ``JobOptions.wait_timeout_ms`` (``WAIT``): a failover now could lose them. ``job_id`` (the first) and
    ``job_ids`` name them; enqueue again with the same ids to be sure (creation is create-if-absent)."""

    def __init__(self, job_ids: list[str], acked: int, wanted: int, shard: str) -> None:
        self.job_ids, self.job_id, self.acked, self.wanted, self.shard = job_ids, job_ids[0], acked, wanted, shard
        super().__init__(
            f"{len(job_ids)} job(s) written on {shard} but only {acked} of {wanted} replica(s) acknowledged them; "
            "enqueue again with the same job ids to be sure they survive a failover"
        )


class JobNotFound(ProducerError, KeyError):
    """No job with this id exists (it never did, or its TTL ran out)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no such job: {job_id}")


class CannotCancel(ProducerError):
    """A cancel that wrote nothing: the job's state is one this producer does not cancel (``reason``)."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id, self.reason = job_id, reason
        super().__init__(f"cannot cancel job {job_id}: {reason}")


class ScriptNotLoaded(ProducerError):
    """The Redis server does not hold the producer's script ``name`` (cancel, requeue) and this user may not
    ``EVAL`` it (the least-privilege producer user of docs/security.md may not run arbitrary Lua). Workers load
    it when they register: start one, or let an operator run the command. Nothing was written. A worker loads the
    text of its own version: while producers and workers of different versions run side by side (a rolling
    upgrade that changed the script), a least-privilege producer's call waits for a worker of its own version."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(
            f"the {name} script is not loaded on this Redis and this user may not EVAL it ({reason}); "
            "workers load it when they register: start one (of this producer's version) and try again"
        )
