"""The backfill's loop: one run over the manifest lines its output does not answer yet (``producer.backfill``
is the command).

Jobs by reference (the workers fetch each URL), at most ``--max-in-flight`` of them enqueued and not yet
answered: more are enqueued only as results come. Results are read from the durable feed through the
backfill's own consumer group (``producer.manifest``: derived from the manifest, the output and the
model tag) and written as JSON lines, flushed as they come (``producer.backfill_out``); a result is
acknowledged on the feed only once it is written. Results the feed does not deliver are found in RQ's
records (``producer.settled``) when the feed has brought none for ``--check-every-s``.

Killed and run again with the same arguments, it skips the lines the output answers, asks for the very
same job ids for the rest (created only if absent: nothing is enqueued twice) and collects the results of
the jobs the killed run had enqueued. See docs/backfill.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from .backfill_out import OutFile, make_record, refusal
from .client import Producer
from .drivers import SyncDriver
from .errors import QueueFull, RedisFull, ShardUnavailable
from .feed import ResultFeed
from .manifest import CONSUMER, BackfillIdentity, ManifestLine
from .progress import Progress
from .settled import Settled, settled
from .wire.results import make_result

log = logging.getLogger(__name__)

POLL_S = 0.5  # the longest wait on the feed before the loop looks around (refill, check, time-out)
DRAIN_S = 60.0  # at most this long reading what the feed holds before the first enqueue
GONE = {"type": "job_gone", "message": "the job expired or was deleted, and the results feed does not hold its result"}
MAX_SEND = 500  # jobs in one enqueue transaction
RETRY_S = 1.0  # after a full queue or an unreachable shard
FAST_CHECK_S = 0.5  # the next check of RQ's records, after one that found results the feed had not brought


@dataclass(frozen=True)
class BackfillSettings:
    """What a backfill runs with; units in names."""

    manifest: Path
    out: Path
    failed_out: Path
    model_tag: str | None = None  # None: the tag the queue's workers announce
    fetch_root: Path | None = None  # where relative paths are taken, as the workers see it (their --fetch-root)
    max_in_flight: int = 1000  # jobs enqueued and not yet answered
    max_queue_length: int | None = None  # enqueue waits while the queue is longer (None: max_in_flight)
    result_ttl_s: int = 60  # how long Redis keeps a finished job: the feed and the output carry its result
    timeout_s: float = 600.0  # give up (resumable) when no line was answered for this long
    check_every_s: float = 5.0  # check RQ's records when the feed brought none of our results this long
    progress_every_s: float = 5.0  # a plain progress line this often when stderr is not a terminal
    cache: bool = True  # the workers cache each result, for web backends' enqueue(..., cache=True) of the same photo


@dataclass
class Flight:
    """A line whose job is enqueued (``sent``), or being enqueued, and not yet answered."""

    line: ManifestLine
    job_id: str
    sent: bool = False
    sent_at: float = 0.0  # monotonic, once sent


class Backfill:
    """One run over the lines not yet answered: keeps the window of jobs in flight full, writes each result
    once, checks RQ's records when the feed is quiet, and gives up after ``timeout_s`` without an answer."""

    def __init__(
        self,
        producer: Producer,
        settings: BackfillSettings,
        identity: BackfillIdentity,
        out: OutFile,
        progress: Progress,
    ) -> None:
        self.producer, self.settings, self.identity, self.out = producer, settings, identity, out
        self.progress = progress
        self.driver = SyncDriver([shard.connection for shard in producer.shards])
        self.chunk = max(1, min(100, settings.max_in_flight // 4))
        self.waiting: dict[str, Flight] = {}
        self.unsent: list[str] = []
        self.retry_at = 0.0
        self.exhausted = self.caught_up = False
        self.told: set[str] = set()
        self.answered = 0
        now = time.monotonic()
        self.last_answer = self.last_fed = self.next_check = now

    def run(self, lines: Iterator[ManifestLine]) -> bool:
        """Answer ``lines`` (those the output lacks); True when every one is answered, False on time-out."""
        self.pending = lines
        feed = self.producer.results(self.identity.group, consumer=CONSUMER, start="$")
        done = self._answer(feed)
        # the last result's line is written: acknowledged. Not when the run raised (a write that failed, a
        # Ctrl-C): that result stays pending and is delivered again to the next run, whose output lacks it
        feed.ack()
        return done

    def _answer(self, feed: ResultFeed) -> bool:
        self._refill(send=False)  # the first window: what a killed run with these arguments may have in flight
        self._drain(feed)
        while True:
            self._refill()
            if self.exhausted and not self.waiting:
                return True
            if time.monotonic() - self.last_answer > self.settings.timeout_s:
                return False
            result = feed.get(timeout_s=POLL_S)  # acknowledges the previous result: it is written
            self.caught_up = result is None
            if result is not None and self._take(result):
                self.last_fed = time.monotonic()
            self._check()

    def _drain(self, feed: ResultFeed) -> None:
        """Before the first enqueue: take what the feed holds for the first window (a killed run's results), so
        that a job of it that ended and expired since is answered from the feed, not created anew."""
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            result = feed.get(timeout_s=POLL_S)
            if result is None:
                return
            self._take(result)

    def _refill(self, send: bool = True) -> None:
        """Enqueue what was refused before (when due), else new lines, as far as the window has room (``send``
        False: only take them in, for the loop to enqueue)."""
        if self.unsent:
            if time.monotonic() >= self.retry_at:
                batch, self.unsent = [self.waiting[i] for i in self.unsent if i in self.waiting], []
                self._send(batch)
            return
        room = self.settings.max_in_flight - len(self.waiting)
        if self.exhausted or room <= 0 or (room < self.chunk and len(self.waiting) >= self.chunk):
            return  # enqueue in chunks, not one job per result
        batch: list[Flight] = []
        while len(batch) < room:
            line = next(self.pending, None)
            if line is None:
                self.exhausted = True
                break
            if line.error is not None:  # cannot be a job: answered now
                self._write(refusal(line))
            else:
                batch.append(Flight(line, self.identity.job_id(line)))
        if batch and send:
            self._send(batch)
        elif batch:
            self.waiting.update((flight.job_id, flight) for flight in batch)
            self.unsent += [flight.job_id for flight in batch]

    def _send(self, batch: list[Flight]) -> None:
        """Enqueue, ``MAX_SEND`` jobs a transaction (no more than the queue may hold: a transaction that can never
        fit would be refused for ever)."""
        size = min(MAX_SEND, self.producer.options.max_queue_length or MAX_SEND)
        for start in range(0, len(batch), size):
            self._send_some(batch[start : start + size])

    def _send_some(self, batch: list[Flight]) -> None:
        for flight in batch:
            self.waiting[flight.job_id] = flight
        ids = [flight.job_id for flight in batch]
        metas = [{"backfill": self.identity.group, "line": flight.line.number} for flight in batch]
        try:
            urls = [f.line.url or "" for f in batch]
            self.producer.enqueue_many(image_urls=urls, job_ids=ids, metas=metas, cache=self.settings.cache)
        except QueueFull as exc:  # back-pressure (the queue is long, or Redis full): other shards' jobs are written
            later = set(exc.not_enqueued if exc.not_enqueued is not None else ids)
            self._sent([i for i in ids if i not in later])
            left = [flight for flight in batch if flight.job_id in later]
            room = 0 if isinstance(exc, RedisFull) else exc.limit - exc.length
            if 0 < room < len(left):  # what fits now goes now
                self._send_some(left[:room])
                left = left[room:]
            self._later([flight.job_id for flight in left], "full", f"{exc}; waiting for it to drain")
            return
        except ShardUnavailable as exc:  # the other shards' jobs are written
            self._later(exc.not_enqueued, "shard", f"{exc}; trying again")
            ids = exc.enqueued
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._later(ids, "redis", f"cannot reach Redis ({exc}); trying again")
            return
        self._sent(ids)

    def _sent(self, ids: list[str]) -> None:
        now = time.monotonic()
        for job_id in ids:
            flight = self.waiting[job_id]
            flight.sent, flight.sent_at = True, now

    def _later(self, ids: list[str], kind: str, message: str) -> None:
        self.unsent += ids
        self.retry_at = time.monotonic() + RETRY_S
        if kind not in self.told:  # once per kind: a long wait is not a flood of lines
            self.told.add(kind)
            self.progress.note(f"backfill: {message}")

    def _take(self, result: dict) -> bool:
        """Write a result of one of our jobs (another job's, or one answered already, is skipped)."""
        flight = self.waiting.pop(str(result.get("job_id")), None)
        if flight is None:
            return False
        self._write(make_record(flight.line, flight.job_id, result))
        return True

    def _write(self, record: dict) -> None:
        if self.out.write(record):
            self.answered += 1
            self.last_answer = time.monotonic()
            outcomes = self.out.answered.outcomes
            self.progress.update(self.out.answered.count, outcomes["ok"], self.out.answered.count - outcomes["ok"])

    def _check(self) -> None:
        """When the feed brought none of our results for a while, or a job has waited half its result's TTL (the
        feed may have lost its result: trimmed while the group lagged, or fed while a shard's group was re-made):
        the jobs that ended, from RQ's records, while they are still there."""
        now = time.monotonic()
        if now < self.next_check:
            return
        oldest = next((f for f in self.waiting.values() if f.sent), None)  # the dict keeps the order they were sent
        overdue = oldest is not None and now - oldest.sent_at > self.settings.result_ttl_s / 2
        if now - self.last_fed < self.settings.check_every_s and not overdue:
            return
        sent = [job_id for job_id, flight in self.waiting.items() if flight.sent]
        try:
            found = self.driver.run(settled(self.producer.core.shard_of, sent)) if sent else Settled()
        except redis.RedisError as exc:
            log.warning("backfill: could not check the jobs in flight (%s); trying again later", exc)
            found = Settled()
        for result in found.results.values():
            self._take(result)
        if self.caught_up:  # the feed holds nothing more for us: a job that is gone took its result with it
            for job_id in found.missing:
                self._take(make_result(job_id, model="", worker="", timings_ms={}, meta=None, error=dict(GONE)))
        answered = found.results or (self.caught_up and found.missing)
        # not longer than a quarter of a result's TTL between two checks: a job the feed lost is found before it expires
        later_s = min(self.settings.check_every_s, self.settings.result_ttl_s / 4)
        self.next_check = time.monotonic() + (FAST_CHECK_S if answered else later_s)
