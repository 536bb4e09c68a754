"""Soak test: 10,000 jobs, 3 workers, 20 random kill -9s with restarts, a Redis connection kill, 5% hostile input.

``python -m bench.soak [--jobs 10000] [--kills 20] [--write]`` (about 2-3 minutes on 2 cores; not part
of the test suite). Jobs come in 21 bursts, 6 s apart; each burst's middle kills a random worker.
Prints lost jobs (must be 0), duplicates published, failures (only the hostile ones may fail) and
the recovery time of every kill: from the kill until every job the dead worker held is final.
``--write`` records the run in RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import redis

from bench.devserver import RedisServer, find_redis_server
from producer import Producer, rqkeys

from .common import ROOT, ensure_model, percentile, pythonpath, small_jpegs, table, write_section

HOSTILE = [b"", b"\x00" * 64, b"\xff\xd8\xff\xe0 truncated jpeg", b"%PDF-1.4 not an image", b"GIF89a garbage"]


class Fleet:
    """Worker processes that can be killed and restarted."""

    def __init__(self, url: str, model: str, size: int) -> None:
        self.url, self.model = url, model
        self.procs = [self._start() for _ in range(size)]

    def _start(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "worker", "--model", self.model, "--redis-url", self.url, "--batch-size", "32",
               "--worker-ttl-s", "3", "--max-wait-ms", "5", "--log-level", "ERROR"]  # fmt: skip
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath()})

    def kill_one(self, conn: redis.Redis, rng: random.Random) -> tuple[float, set[str]]:
        """SIGKILL a random worker at a random moment; restart it."""
        index = rng.randrange(len(self.procs))
        victim = self.procs[index]
        victim.send_signal(signal.SIGSTOP)  # frozen: what it holds now is what it will lose
        jobs = _held_by_pid(conn).get(victim.pid, set())
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.wait()
        self.procs[index] = self._start()
        return killed_at, jobs

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=60)


def _held_by_pid(conn: redis.Redis) -> dict[int, set[str]]:
    held: dict[int, set[str]] = {}
    for member in conn.zrange(rqkeys.started("classify"), 0, -1):
        name = conn.hget(rqkeys.EXECUTION_PREFIX.encode() + member, "worker_name")
        if name:
            held.setdefault(int(name.decode().rsplit(":", 1)[-1]), set()).add(member.decode().rsplit(":", 1)[0])
    return held


def final(conn: redis.Redis, ids: list[str]) -> dict[str, str]:
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(rqkeys.job(job_id), "status")
        return {i: (s or b"gone").decode() for i, s in zip(ids, pipe.execute())}


def watch_recovery(conn: redis.Redis, killed_at: float, jobs: set[str], out: list) -> None:
    """Record how long until every job the killed worker held is finished or failed."""
    if not jobs:
        out.append(None)
        return
    while True:
        states = final(conn, list(jobs))
        if all(s in ("finished", "failed") for s in states.values()):
            out.append(time.monotonic() - killed_at)
            return
        if time.monotonic() - killed_at > 300:
            out.append(float("inf"))
            return
        time.sleep(0.05)


def run(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    server = RedisServer(binary=find_redis_server(prefer_embedded=False)).start()
    conn = redis.Redis.from_url(server.url)
    producer = Producer(server.url)
    published: Counter = Counter()
    errors: dict[str, str] = {}
    sub = producer.subscribe()
    listening = threading.Event()

    def listen() -> None:
        while not listening.is_set():
            message = sub.get(timeout=0.2)
            if message is not None:
                published[message["job_id"]] += 1
                if message["error"]:
                    errors[message["job_id"]] = message["error"]["type"]

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    fleet = Fleet(server.url, str(ensure_model("tiny")), args.workers)
    good, ids, hostile = small_jpegs(), [], set()
    recoveries: list = []
    watchers = []
    started = time.monotonic()
    per_kill = args.jobs // (args.kills + 1)
    try:
        for k in range(args.kills + 1):
            chunk = []
            for _ in range(per_kill if k < args.kills else args.jobs - len(ids)):
                bad = rng.random() < args.hostile
                chunk.append(rng.choice(HOSTILE) if bad else rng.choice(good))
            new = []
            for i in range(0, len(chunk), 100):  # paced enqueues: jobs keep flowing through the kills
                new += producer.enqueue_many(chunk[i : i + 100])
                time.sleep(args.pace_s)
                if i // 100 == len(chunk) // 200 and k < args.kills:  # mid-chunk: workers are busy
                    killed_at, jobs = fleet.kill_one(conn, rng)
                    t = threading.Thread(target=watch_recovery, args=(conn, killed_at, jobs, recoveries), daemon=True)
                    t.start()
                    watchers.append(t)
                if i == 0 and k == args.kills // 2:
                    conn.client_kill_filter(_type="normal", skipme=True)
            ids += new
            hostile.update(j for j, data in zip(new, chunk) if data in HOSTILE)
            time.sleep(args.interval_s)  # workers restart (a few s) and recover before the next burst
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = final(conn, ids)
            if all(s in ("finished", "failed") for s in states.values()):
                break
            time.sleep(0.2)
        for t in watchers:
            t.join(timeout=60)
        time.sleep(1)  # let the last PUBLISHes reach the listener
    finally:
        listening.set()
        fleet.stop()
        server.stop()
    elapsed = time.monotonic() - started
    lost = [i for i, s in states.items() if s not in ("finished", "failed")]
    failed = {i for i, s in states.items() if s == "failed"}
    return {
        "jobs": len(ids), "hostile": len(hostile), "lost": len(lost), "failed": len(failed),
        "failed_not_hostile": len(failed - hostile), "hostile_not_failed": len(hostile - failed),
        "published_missing": sum(1 for i in ids if published[i] == 0),
        "duplicates_published": sum(max(0, published[i] - 1) for i in ids), "kills": args.kills,
        "recoveries": recoveries, "elapsed_s": elapsed, "workers": args.workers,
        "unexpected_errors": dict(Counter(errors.get(i, "?") for i in failed - hostile)),
    }  # fmt: skip


def render(r: dict) -> str:
    measured = [x for x in r["recoveries"] if x is not None]
    rows = [
        ["jobs", r["jobs"]], ["hostile (5%)", r["hostile"]], ["workers", r["workers"]],
        ["kill -9 (with restart)", r["kills"]], ["Redis CLIENT KILL", 1], ["**lost**", r["lost"]],
        ["failed", r["failed"]],
        ["failed but not hostile", f"{r['failed_not_hostile']} {r['unexpected_errors'] or ''}".strip()],
        ["hostile but not failed", r["hostile_not_failed"]], ["never published", r["published_missing"]],
        ["duplicates published", r["duplicates_published"]], ["wall time (s)", round(r["elapsed_s"], 1)],
    ]  # fmt: skip
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
    parser.add_argument("--pace-s", type=float, default=0.0, help="pause after each 100 enqueued")
    parser.add_argument("--interval-s", type=float, default=6.0, help="pause between bursts (one kill each)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="record the run in RELIABILITY.md")
    args = parser.parse_args()
    result = run(args)
    body = render(result)
    print(body)
    if args.write:
        write_section("soak", body, ROOT / "RELIABILITY.md")
    sys.exit(1 if result["lost"] or result["failed_not_hostile"] else 0)


if __name__ == "__main__":
    main()
