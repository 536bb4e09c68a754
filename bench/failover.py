"""What a Redis failover costs: acknowledged jobs lost, jobs run twice, and the time to the first answer after it.

``python -m bench.failover [--failovers 3] [--write]``

Real processes on loopback (bench/sentinelserver.py: a primary, a replica, three sentinels) and one
worker on ``redis+sentinel://``. A producer thread enqueues a steady stream (caller-chosen ids; a
refused enqueue is retried with the same id) while the primary is SIGKILLed ``--failovers`` times,
each time with jobs in hand; the dead node then comes back as a replica. Run once with
``wait_replicas=0`` and once with ``wait_replicas=1``: lost = acknowledged ids never answered; run
twice = ids with more than one execution (``rq:executions:<id>`` entries, at least once delivery);
recovery = from the kill to the first job answered after it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import redis

from producer import JobOptions, NotReplicated, Producer, ShardUnavailable
from worker.redisconn import connect

from .common import ROOT, ensure_model, report, small_jpegs, table
from .sentinelserver import SentinelGroup


class Stream(threading.Thread):
    def __init__(self, url: str, options: JobOptions) -> None:
        super().__init__(daemon=True)
        self.producer, self.acknowledged, self.stopping = Producer(url, options=options), [], threading.Event()

    def run(self) -> None:
        n, photo = 0, small_jpegs(1)[0]
        while not self.stopping.is_set():
            try:
                self.producer.enqueue(photo, job_id=f"f-{n}")
            except (NotReplicated, ShardUnavailable, redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.05)
                continue
            self.acknowledged.append(f"f-{n}")
            n += 1
            time.sleep(0.005)


def statuses(url: str, ids: list[str]) -> list[bytes | None]:
    conn = connect(url)
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "ended_at")
        return pipe.execute()


def one_run(wait_replicas: int, failovers: int, model: str) -> list[object]:
    with SentinelGroup(replicas=1) as group:
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "--model", model, "--redis-url", group.url, "--batch-size", "16",
             "--idle-wait-ms", "200", "--worker-ttl-s", "6", "--log-level", "WARNING"],
            cwd=ROOT, env={**os.environ},
        )  # fmt: skip
        stream = Stream(group.url, JobOptions(wait_replicas=wait_replicas, wait_timeout_ms=500))
        stream.start()
        recoveries = []
        try:
            for _ in range(failovers):
                time.sleep(2.0)
                old = group.kill_primary()
                killed = time.monotonic()
                group.wait_for_promotion(old)
                before = len(stream.acknowledged)
                while time.monotonic() - killed < 60:  # the first job enqueued after the kill, answered
                    fresh = stream.acknowledged[before : before + 5]
                    if fresh and any(statuses(group.url, fresh)):
                        break
                    time.sleep(0.05)
                recoveries.append(time.monotonic() - killed)
                group.revive(old)
                group.wait_until(lambda: group.replicas_in_sync() == 1, 30, "the revived replica")
            time.sleep(2.0)
            stream.stopping.set()
            stream.join(10)
            ids = list(stream.acknowledged)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(statuses(group.url, ids)):
                time.sleep(0.5)
            done = statuses(group.url, ids)
            conn = connect(group.url)
            with conn.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(f"rq:job:{job_id}", "lost_deliveries")
                lost_deliveries = pipe.execute()
        finally:
            worker.send_signal(15)
            worker.wait(30)
    lost = sum(1 for d in done if not d)
    retried = sum(1 for v in lost_deliveries if v and int(v) > 0)
    restarted = "no" if worker.returncode in (0, None) else f"exit {worker.returncode}"
    return [wait_replicas, failovers, len(ids), lost, retried, f"{min(recoveries):.1f}-{max(recoveries):.1f}",
            restarted]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    model = str(ensure_model("tiny"))
    rows = [one_run(wait, args.failovers, model) for wait in (0, 1)]
    headers = ["wait_replicas", "failovers", "acknowledged jobs", "lost", "re-run after a lost delivery",
               "kill -> first answer (s)", "worker exited"]  # fmt: skip
    body = table(headers, rows) + (
        "\n\n- lost = enqueues that returned but whose job no primary had after the promotion (asynchronous "
        "replication); with wait_replicas=1 an enqueue returns only once the replica has it.\n"
        "- re-run: jobs whose take or start the new primary never saw run again (at least once; results "
        "de-duplicate on job_id)."
    )
    report("failover", "Redis failover (Sentinel, SIGKILLed primary)", body, args.write)


if __name__ == "__main__":
    main()
