"""``python -m producer status``: queue depth, registries, live workers and the results feed, as a table or JSON.

Read-only: nothing here writes to Redis."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import redis
from rq import Queue, Worker

from .feed import feed_info
from .wire.serializer import MsgpackSerializer


def gather(connection: redis.Redis, queue_name: str) -> dict[str, Any]:
    """What an operator asks first: how much is waiting, failing, and who is working on it."""
    queue = Queue(queue_name, connection=connection, serializer=MsgpackSerializer)
    workers = []
    now = datetime.now(timezone.utc)
    for worker in sorted(Worker.all(queue=queue), key=lambda w: w.name):
        extra = connection.hmget(worker.key, "batches", "images_per_s_1m")
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=timezone.utc)
        parts = worker.name.split(":")
        workers.append(
            {
                "name": worker.name,
                "device": parts[1] if len(parts) == 3 else "?",
                "state": worker.get_state(),
                "jobs_ok": worker.successful_job_count,
                "jobs_failed": worker.failed_job_count,
                "batches": int(extra[0] or 0),
                "images_per_s_1m": float(extra[1] or 0.0),
                "last_heartbeat_s_ago": round((now - beat).total_seconds(), 1) if beat else None,
            }
        )
    return {
        # get_job_count(cleanup=False): read-only. RQ's ``count`` runs its clean-up, which fails jobs whose
        # started-registry score has passed (wrongly, for a worker whose clock is behind) and runs their
        # on_failure callbacks inside this process.
        "queue": queue_name,
        "queued": queue.count,
        "started": queue.started_job_registry.get_job_count(cleanup=False),
        "failed": queue.failed_job_registry.get_job_count(cleanup=False),
        "finished": queue.finished_job_registry.get_job_count(cleanup=False),
        "workers": workers,
        "feed": feed_info(connection, queue_name),
    }


def render(status: dict[str, Any]) -> str:
    """A readable table."""
    lines = [
        f"queue {status['queue']}: {status['queued']} queued, {status['started']} started, "
        f"{status['failed']} failed, {status['finished']} finished (kept for their result TTL)",
        f"{len(status['workers'])} worker(s) alive",
    ]
    if status["workers"]:
        head = f"{'name':<36} {'device':<7} {'state':<6} {'batches':>8} {'ok':>8} {'failed':>7} "
        head += f"{'img/s 1m':>9} {'beat':>6}"
        lines += ["", head]
        for w in status["workers"]:
            beat = "?" if w["last_heartbeat_s_ago"] is None else f"{w['last_heartbeat_s_ago']:.0f}s"
            lines.append(
                f"{w['name']:<36} {w['device']:<7} {w['state']:<6} {w['batches']:>8} {w['jobs_ok']:>8} "
                f"{w['jobs_failed']:>7} {w['images_per_s_1m']:>9.1f} {beat:>6}"
            )
    return "\n".join(lines + feed_lines(status["feed"]))


def feed_lines(feed: dict[str, Any]) -> list[str]:
    """The results feed: its length and cap, then each consumer group's lag."""
    lines = ["", f"results feed {feed['stream']}: {feed['length']} entries ({feed['cap']})"]
    if not feed["groups"]:
        lines.append("  no consumer groups")
    for g in feed["groups"]:
        if g["lag"] is not None:
            lag = f"lag {g['lag']}"
        elif g["reports_lag"]:
            lag = "lag unknown (Redis cannot tell after deletions)"
        else:
            lag = "lag unknown (Redis < 7 does not report it)"
        lines.append(
            f"  group {g['name']}: {lag}, {g['pending']} pending, {g['consumers']} consumer(s), "
            f"last delivered {g['last_delivered_id']}"
        )
    return lines
