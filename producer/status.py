"""``python -m producer status``: queue depth, registries, live workers, the results feed and keys of the wrong
type, as a table or JSON.

Read-only: nothing here writes to Redis."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import redis
from rq import Queue, Worker

from .feed import CAP_NOTE, feed_info
from .wire import keys
from .wire.serializer import MsgpackSerializer


def expected_types(queue: Queue) -> dict[str, str]:
    """The queue's keys that RQ and the workers write, with the type each must have. Any client allowed to
    write one can create it with another type while it does not exist (docs/security.md); the workers then
    leave the jobs where they are and report it (RELIABILITY.md, "Keys of the wrong type")."""
    return {
        queue.key: "list",
        queue.intermediate_queue_key: "list",
        queue.started_job_registry.key: "zset",
        queue.finished_job_registry.key: "zset",
        queue.failed_job_registry.key: "zset",
        queue.canceled_job_registry.key: "zset",
        keys.QUEUES: "set",
        keys.WORKERS: "set",
        keys.queue_workers(queue.name): "set",
        keys.results_stream(queue.name): "stream",
    }


def wrong_types(connection: redis.Redis, queue: Queue) -> dict[str, dict[str, str]]:
    """Each of the queue's keys that exists with another type than RQ's: ``{key: {found, wanted}}``."""
    wanted = expected_types(queue)
    with connection.pipeline(transaction=False) as pipe:
        for key in wanted:
            pipe.type(key)
        found = [t.decode() if isinstance(t, bytes) else str(t) for t in pipe.execute()]
    return {
        key: {"found": kind, "wanted": want}
        for (key, want), kind in zip(wanted.items(), found, strict=True)
        if kind not in ("none", want)
    }


def gather(connection: redis.Redis, queue_name: str) -> dict[str, Any]:
    """What an operator asks first: how much is waiting, failing, and who is working on it. A count that a key
    of the wrong type makes unreadable is None."""
    queue = Queue(queue_name, connection=connection, serializer=MsgpackSerializer)
    bad = wrong_types(connection, queue)
    workers = []
    now = datetime.now(timezone.utc)
    listed = Worker.all(queue=queue) if keys.queue_workers(queue_name) not in bad and keys.WORKERS not in bad else []
    for worker in sorted(listed, key=lambda w: w.name):
        extra = connection.hmget(worker.key, "batches", "images_per_s_1m", "wrong_type_keys", "model")
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
                "wrong_type_keys": _reported(extra[2]),
                "model": extra[3].decode("utf-8", "backslashreplace") if extra[3] else "?",
            }
        )

    def counted(key: str, count: Any) -> int | None:
        return None if key in bad else count()

    stream = keys.results_stream(queue_name)
    return {
        # get_job_count(cleanup=False): read-only. RQ's ``count`` runs its clean-up, which fails jobs whose
        # started-registry score has passed (wrongly, for a worker whose clock is behind) and runs their
        # on_failure callbacks inside this process.
        "queue": queue_name,
        "queued": counted(queue.key, lambda: queue.count),
        "started": counted(queue.started_job_registry.key, lambda: _count(queue.started_job_registry)),
        "failed": counted(queue.failed_job_registry.key, lambda: _count(queue.failed_job_registry)),
        "finished": counted(queue.finished_job_registry.key, lambda: _count(queue.finished_job_registry)),
        "workers": workers,
        "feed": feed_info(connection, queue_name) if stream not in bad else _unreadable_feed(stream),
        # keys of the wrong type: the queue's own, found here, and others (a job's) that workers reported lately
        "wrong_type_keys": bad,
        "reported_wrong_type_keys": sorted({key for w in workers for key in w["wrong_type_keys"]} - set(bad)),
    }


def _count(registry: Any) -> int:
    return registry.get_job_count(cleanup=False)


def _reported(raw: bytes | None) -> list[str]:
    """The keys of the wrong type a worker reported in its hash (a JSON list), or none."""
    try:
        found = json.loads(raw or b"[]")
    except ValueError:
        return []
    return [str(key) for key in found] if isinstance(found, list) else []


def _unreadable_feed(stream: str) -> dict[str, Any]:
    return {"stream": stream, "length": None, "cap": CAP_NOTE, "groups": []}


def _escaped(key: str) -> str:
    """A key for the terminal: nothing in it can end the line or drive the terminal."""
    return key.encode("unicode_escape").decode("ascii")


def render(status: dict[str, Any]) -> str:
    """A readable table."""

    def n(value: int | None) -> str:
        return "?" if value is None else str(value)

    lines = [
        f"queue {status['queue']}: {n(status['queued'])} queued, {n(status['started'])} started, "
        f"{n(status['failed'])} failed, {n(status['finished'])} finished (kept for their result TTL)",
        f"{len(status['workers'])} worker(s) alive",
    ]
    for key, types in status.get("wrong_type_keys", {}).items():
        lines.append(
            f"WRONG TYPE: {_escaped(key)} is a {types['found']}, not a {types['wanted']}: delete it "
            "(RELIABILITY.md, 'Keys of the wrong type', says what it stops meanwhile)"
        )
    for key in status.get("reported_wrong_type_keys", []):
        lines.append(f"WRONG TYPE (reported by a worker): {_escaped(key)}: delete it")
    if status["workers"]:
        tags = Counter(w["model"] for w in status["workers"])
        if len(tags) > 1:  # a rolling update under way (or a stuck one)
            lines.append("models: " + ", ".join(f"{_escaped(t)} ({n} workers)" for t, n in sorted(tags.items())))
        head = f"{'name':<36} {'device':<7} {'state':<6} {'model':<20} {'batches':>8} {'ok':>8} {'failed':>7} "
        head += f"{'img/s 1m':>9} {'beat':>6}"
        lines += ["", head]
        for w in status["workers"]:
            beat = "?" if w["last_heartbeat_s_ago"] is None else f"{w['last_heartbeat_s_ago']:.0f}s"
            lines.append(
                f"{w['name']:<36} {w['device']:<7} {w['state']:<6} {_escaped(w['model']):<20} {w['batches']:>8} "
                f"{w['jobs_ok']:>8} {w['jobs_failed']:>7} {w['images_per_s_1m']:>9.1f} {beat:>6}"
            )
    return "\n".join(lines + feed_lines(status["feed"]))


def feed_lines(feed: dict[str, Any]) -> list[str]:
    """The results feed: its length and cap, then each consumer group's lag."""
    length = "?" if feed["length"] is None else feed["length"]
    lines = ["", f"results feed {feed['stream']}: {length} entries ({feed['cap']})"]
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
