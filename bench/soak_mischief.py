"""What a web backend's own credentials can do to the queue during the soak (``bench.soak``): keys of the
wrong type written with the producer user's Redis 6.2 ACL (the permissive one: on 7 the selectors refuse
most), held for a while and then deleted by an operator; and cancels racing the workers' takes."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import redis

from producer import CancelOutcome, CannotCancel, Producer
from producer.wire import keys as rqkeys
from tests.acls import PRODUCER_ACL_62, rules

HOLD_S = 2.0  # how long a wrong-type key stays before the operator deletes it (jobs wait meanwhile)
QUEUE = "classify"


def producer_user(conn: redis.Redis, url: str) -> str:
    """Create the ``producer`` user of docs/security.md (Redis 6.2's rules) and return its URL."""
    conn.execute_command("ACL", "SETUSER", "producer", "reset", *rules(PRODUCER_ACL_62))
    return "redis://producer:producer-secret@" + url.removeprefix("redis://")


class Mischief:
    """Wrong-type keys (one per call, in turn) and racing cancels; ``counts`` and ``canceled`` say what was done."""

    def __init__(self, conn: redis.Redis, url: str, rng: random.Random) -> None:
        self.admin, self.rng = conn, rng
        self.hostile = redis.Redis.from_url(producer_user(conn, url))
        self.producer = Producer(url)
        self.counts: Counter[str] = Counter()
        self.canceled: dict[str, CancelOutcome] = {}
        self.threads: list[threading.Thread] = []

    def wrong_types(self) -> None:
        """Give every shared key the workers need that does not exist now (between bursts: the started
        registry; before the first results: the feed and the failed registry) the wrong type, with the
        producer's credentials; each is deleted ``HOLD_S`` later, as an operator would once it is reported."""
        for key, write in (
            (rqkeys.started(QUEUE), lambda key: self.hostile.hset(key, "x", "y")),
            (rqkeys.results_stream(QUEUE), lambda key: self.hostile.rpush(key, "x")),
            (rqkeys.failed(QUEUE), lambda key: self.hostile.sadd(key, "x")),
        ):
            if not self.admin.exists(key):
                self._hold(key, write)

    def wrong_dependents(self, queued: list[str]) -> None:
        """A queued job's dependents key (a set in RQ) written as a hash, which the producer's rules allow."""
        if queued:
            self._hold(
                rqkeys.job(self.rng.choice(queued)) + ":dependents", lambda key: self.hostile.hset(key, "x", "y")
            )

    def _hold(self, key: str, write: Any) -> None:
        try:
            write(key)
        except redis.ResponseError:  # NOPERM (the ACL), WRONGTYPE (a worker created it meanwhile)
            self.counts["wrong_type_refused"] += 1
            return
        self.counts["wrong_type_keys"] += 1
        timer = threading.Timer(HOLD_S, self.admin.delete, args=(key,))
        timer.daemon = True
        timer.start()
        self.threads.append(timer)

    def cancel_some(self, ids: list[str], fraction: float) -> None:
        """Cancel about ``fraction`` of ``ids`` (just enqueued: they race the workers' takes)."""
        for job_id in ids:
            if self.rng.random() < fraction:
                try:
                    self.canceled[job_id] = self.producer.cancel(job_id)
                except CannotCancel:  # a key of the wrong type (ours, above): nothing written, the job runs
                    self.counts["cancels_refused_wrong_type"] += 1

    def violations(self, states: dict[str, str], published: Counter, errors: dict[str, str]) -> int:
        """Canceled jobs that ended otherwise than their cancel said: queued ones that ran, running ones that
        ended ok, final ones that changed, or any result published twice."""
        bad = 0
        for job_id, outcome in self.canceled.items():
            state, count = states.get(job_id), published[job_id]
            if outcome is CancelOutcome.CANCELED:
                bad += state != "canceled" or count != 0
            elif outcome is CancelOutcome.CANCELING:
                bad += state != "canceled" or count > 1 or (count == 1 and errors.get(job_id) != "canceled")
            elif outcome is CancelOutcome.ALREADY_FINAL:
                bad += state not in ("finished", "failed") or count != 1
            else:
                bad += 1  # nothing in the soak cancels twice
        return bad
