"""Soak test: 10,000 jobs, 3 workers, 20 random kill -9s with restarts, a Redis connection kill, 5% hostile
input, 0.5% foreign ids and hashes, one worker frozen (SIGSTOP) past its TTL, a Redis full midway, a
consumer of the durable results feed killed (SIGKILL) and restarted 10 times, keys of the wrong type written
with the producer's credentials (one per burst, deleted 2 s later), and 1% of jobs canceled as they are taken.

``python -m bench.soak [--jobs 10000] [--kills 20] [--write]`` (about 3 minutes on 2 cores; not part
of the test suite). Jobs come in 21 bursts, 6 s apart; each burst's middle kills a random worker.
A third of the way in, one worker is frozen for 3 TTLs (its jobs are re-queued; when it thaws, its
late finishes must be skipped: 0 duplicates), and for 10 s Redis's ``maxmemory`` sits just above what
it uses (enqueues raise ``RedisFull`` and are retried, as a web backend would; workers must keep
finishing). Prints lost jobs (must be 0), duplicates published, failures (only the hostile ones
may fail), crashes (worker exits we did not cause: must be 0) and the recovery time of every kill.
``--write`` records the run in RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import redis

from bench.devserver import RedisServer, find_redis_server
from producer import Producer

from .common import OUT, ROOT, ensure_model, percentile, small_jpegs, table, write_section
from .soak_consumer import FeedConsumer
from .soak_faults import HOSTILE, WORKER_TTL_S, Faults, Fleet, enqueue_retrying, final, push_foreign
from .soak_mischief import Mischief


class Listener:
    """Counts every result published on the channel, per job id."""

    def __init__(self, producer: Producer) -> None:
        self.published: Counter = Counter()
        self.errors: dict[str, str] = {}
        self.sub, self.stopping = producer.subscribe(), threading.Event()
        self.thread = threading.Thread(target=self.listen, daemon=True)
        self.thread.start()

    def listen(self) -> None:
        while not self.stopping.is_set():
            message = self.sub.get(timeout=0.2)
            if message is not None:
                self.published[message["job_id"]] += 1
                if message["error"]:
                    self.errors[message["job_id"]] = message["error"]["type"]


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    server = RedisServer(
        binary=find_redis_server(prefer_embedded=False), extra_args=["--maxmemory-policy", "noeviction"]
    ).start()
    conn = redis.Redis.from_url(server.url)
    producer = Producer(server.url)
    listener = Listener(producer)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak-feed.txt").unlink(missing_ok=True)
    consumer = FeedConsumer(server.url, OUT / "soak-feed.txt")
    fleet = Fleet(server.url, str(ensure_model("tiny")), args.workers)
    faults = Faults(args, conn, fleet, rng)
    mischief = Mischief(conn, server.url, rng)
    good, ids, hostile, foreign = small_jpegs(), [], set(), Foreign()
    started = time.monotonic()
    per_kill = args.jobs // (args.kills + 1)
    try:
        for k in range(args.kills + 1):
            chunk = [
                rng.choice(HOSTILE) if rng.random() < args.hostile else rng.choice(good)
                for _ in range(per_kill if k < args.kills else args.jobs - len(ids))
            ]
            faults.burst_start(k)
            if k % 2 == 1 and consumer.kills < args.consumer_kills:
                consumer.kill_and_restart()
            new = _burst(args, k, chunk, Burst(producer, conn, faults, mischief, foreign), rng)
            ids += new
            hostile.update(j for j, data in zip(new, chunk, strict=False) if data in HOSTILE)
            _pause(fleet, args.interval_s / 2)  # workers restart (a few s) and recover before the next burst
            mischief.wrong_types()  # idle by now: the started registry is absent (deleted again in 2 s)
            _pause(fleet, args.interval_s / 2)
        states = _wait_final(conn, ids + foreign.ids, fleet)
        faults.counts.update(mischief.counts)
        expected = (set(ids) - _unfed(mischief, listener)) | set(foreign.ids)
        _wait_fed(expected, consumer, faults)
        for t in faults.threads + mischief.threads:
            t.join(timeout=60)
        time.sleep(1)  # let the last PUBLISHes reach the listener
    finally:
        listener.stopping.set()
        consumer.stop()
        fleet.stop()
        server.stop()
    return _summary(args, ids, hostile, foreign, states, listener, fleet, faults, time.monotonic() - started, mischief)


@dataclass
class Foreign:
    """Jobs pushed as a plain RQ client would (``push_foreign``): their ids, and those no client could name."""

    ids: list[str] = field(default_factory=list)
    unaddressable: int = 0


@dataclass
class Burst:
    """What a burst of enqueues works with."""

    producer: Producer
    conn: redis.Redis
    faults: Faults
    mischief: Mischief
    foreign: Foreign


def _burst(args: argparse.Namespace, k: int, chunk: list[bytes], on: Burst, rng: random.Random) -> list[str]:
    """Enqueue ``chunk`` 100 at a time, paced (jobs keep flowing through the kills), with cancels, foreign jobs
    and, mid-chunk, burst ``k``'s faults; the ids enqueued."""
    new: list[str] = []
    for i in range(0, len(chunk), 100):
        batch = enqueue_retrying(on.producer, chunk[i : i + 100], on.faults.counts)
        on.mischief.cancel_some(batch, args.cancels)  # right after the enqueue: they race the takes
        new += batch
        for _ in range(sum(rng.random() < args.foreign for _ in range(100))):
            addressable, dropped = push_foreign(on.conn, len(on.foreign.ids) + on.foreign.unaddressable)
            on.foreign.ids += addressable
            on.foreign.unaddressable += dropped
        time.sleep(args.pace_s)
        if i // 100 == len(chunk) // 200:  # mid-chunk: workers are busy
            on.faults.mid_burst(k)
            on.mischief.wrong_dependents(new)
    return new


def _wait_fed(expected: set[str], consumer: FeedConsumer, faults: Faults) -> None:
    """Wait up to 2 minutes for the feed consumer to have seen ``expected``; count what it missed."""
    deadline = time.monotonic() + 120
    while not expected <= consumer.seen() and time.monotonic() < deadline:
        time.sleep(0.2)
    faults.counts["feed_missing"] = len(expected - consumer.seen())
    faults.counts["consumer_kills"] = consumer.kills


def _unfed(mischief: Mischief, listener: Listener) -> set[str]:
    """Canceled jobs with no result: canceled before they ran, or while they ran on a worker then killed
    (none of these is published, so none is fed; ``Mischief.violations`` judges them)."""
    return {job_id for job_id in mischief.canceled if listener.published[job_id] == 0}


def _pause(fleet: Fleet, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        fleet.check()
        time.sleep(0.2)


def _wait_final(conn: redis.Redis, ids: list[str], fleet: Fleet) -> dict[str, str]:
    deadline = time.monotonic() + 300
    while True:
        fleet.check()
        states = final(conn, ids)
        if all(s in ("finished", "failed", "gone", "canceled") for s in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def _summary(
    args: argparse.Namespace,
    ids: list[str],
    hostile: set[str],
    foreign: Foreign,
    states: dict[str, str],
    listener: Listener,
    fleet: Fleet,
    faults: Faults,
    elapsed: float,
    mischief: Mischief,
) -> dict:
    published, canceled = listener.published, set(mischief.canceled)
    kept = [i for i in ids if i not in canceled]  # the canceled ones are judged by Mischief.violations
    lost = [i for i in kept if states[i] not in ("finished", "failed")]
    failed = {i for i in kept if states[i] == "failed"}
    return {
        "jobs": len(ids),
        "hostile": len(hostile),
        "lost": len(lost),
        "failed": len(failed),
        "failed_not_hostile": len(failed - hostile),
        "hostile_not_failed": len((hostile - canceled) - failed),
        "published_missing": sum(1 for i in kept if published[i] == 0),
        "duplicates_published": sum(max(0, published[i] - 1) for i in ids),
        "kills": args.kills,
        "foreign": len(foreign.ids) + foreign.unaddressable,
        "foreign_unaddressable": foreign.unaddressable,
        "foreign_unanswered": sum(1 for i in foreign.ids if published[i] == 0),
        "crashes": fleet.crashes,
        "redis_full_refusals": faults.counts["redis_full_refusals"],
        "frozen": faults.counts["frozen"],
        "consumer_kills": faults.counts["consumer_kills"],
        "feed_missing": faults.counts["feed_missing"],
        "wrong_type_keys": faults.counts["wrong_type_keys"],
        "cancels_refused": faults.counts["cancels_refused_wrong_type"],
        "recoveries": faults.recoveries,
        "elapsed_s": elapsed,
        "workers": args.workers,
        "unexpected_errors": dict(Counter(listener.errors.get(i, "?") for i in failed - hostile)),
        "canceled": dict(Counter(str(o) for o in mischief.canceled.values())),
        "cancel_violations": mischief.violations(states, listener.published, listener.errors),
    }


def render(r: dict) -> str:
    measured = [x for x in r["recoveries"] if x is not None]
    rows = [
        ["jobs", r["jobs"]],
        ["hostile (5%)", r["hostile"]],
        ["workers", r["workers"]],
        ["kill -9 (with restart)", r["kills"]],
        ["Redis CLIENT KILL", 1],
        [f"worker frozen (SIGSTOP) for {3 * WORKER_TTL_S} s, TTL {WORKER_TTL_S} s", r["frozen"]],
        ["enqueues refused by a full Redis (RedisFull, retried)", r["redis_full_refusals"]],
        ["foreign ids and hashes (0.5%)", f"{r['foreign']} ({r['foreign_unaddressable']} not UTF-8: dropped)"],
        ["foreign (addressable) never answered", r["foreign_unanswered"]],
        ["worker crashes (exits not caused by the soak)", r["crashes"]],
        ["feed consumer kill -9 (with restart)", r["consumer_kills"]],
        ["keys of the wrong type written with the producer's credentials (held 2 s)", r["wrong_type_keys"]],
        ["jobs canceled as they were taken, by outcome", r["canceled"]],
        ["cancels refused while a key was of the wrong type (nothing written; the job ran)", r["cancels_refused"]],
        ["canceled jobs that ended otherwise than their cancel said", r["cancel_violations"]],
        ["results lost through the durable feed", r["feed_missing"]],
        ["**lost**", r["lost"]],
        ["failed", r["failed"]],
        ["failed but not hostile", f"{r['failed_not_hostile']} {r['unexpected_errors'] or ''}".strip()],
        ["hostile but not failed", r["hostile_not_failed"]],
        ["never published", r["published_missing"]],
        ["duplicates published", r["duplicates_published"]],
        ["wall time (s)", round(r["elapsed_s"], 1)],
    ]
    rec = ", ".join("held none" if x is None else f"{x:.1f}" for x in r["recoveries"])
    text = table(["", "value"], rows)
    if measured:
        text += f"\n\nRecovery per kill (s, kill -> every held job final): {rec}\n\n"
        text += f"median {percentile(measured, 50):.1f} s, max {max(measured):.1f} s"
        text += " (worker TTL 3 s, reaper every 1.5 s)."
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--hostile", type=float, default=0.05)
    parser.add_argument("--consumer-kills", type=int, default=10, help="SIGKILLs of the feed consumer")
    parser.add_argument("--foreign", type=float, default=0.005, help="foreign ids and hashes per job enqueued")
    parser.add_argument("--pace-s", type=float, default=0.0, help="pause after each 100 enqueued")
    parser.add_argument("--interval-s", type=float, default=6.0, help="pause between bursts (one kill each)")
    parser.add_argument("--cancels", type=float, default=0.01, help="jobs canceled right after their enqueue")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="record the run in RELIABILITY.md")
    args = parser.parse_args()
    result = run(args)
    body = render(result)
    print(body)
    if args.write:
        write_section("soak", body, ROOT / "RELIABILITY.md")
    bad = (
        result["lost"]
        or result["failed_not_hostile"]
        or result["duplicates_published"]
        or result["crashes"]
        or result["feed_missing"]
        or result["cancel_violations"]
    )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
