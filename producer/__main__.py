"""``python -m producer``: push images to the classify queue, read results (feed or channel), show status."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import redis

from . import backfill, dashboard, push, requeue
from .client import Producer
from .errors import NotReplicated, ShardUnavailable
from .jobdata import JobOptions
from .jsonout import dumps_json
from .wire.jobs import DEFAULT_QUEUE, ProtocolError
from .wire.printable import shown


def status(producer: Producer, args: argparse.Namespace) -> int:
    """Each shard's status in turn. A shard that cannot be reached is marked down, the others shown: exit 1
    (2 when none could be reached). With one server, an unreachable one is main's one line, exit 2."""
    from .status import gather, render

    several = len(producer.shards) > 1  # every shard of a sharded queue, in turn
    statuses = []
    for shard in producer.shards:
        try:
            found = gather(shard.connection, args.queue)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not several:
                raise
            found = {"queue": args.queue, "down": True, "error": f"cannot reach Redis: {exc}"}
        statuses.append(found | ({"shard": shard.name} if several else {}))
    if args.json:
        print(json.dumps(statuses[0] if len(statuses) == 1 else statuses, indent=1))
    else:
        print("\n\n".join(shard_status(found, render) for found in statuses))
    down = sum(1 for found in statuses if found.get("down"))
    return 0 if not down else 2 if down == len(statuses) else 1


def shard_status(found: dict, render: Callable[[dict], str]) -> str:
    """One shard's part of ``status``: its name (with several), then its table, or DOWN and why."""
    head = f"shard {found['shard']}\n" if "shard" in found else ""
    return head + (f"DOWN: {found['error']}" if found.get("down") else render(found))


def result_line(result: dict) -> str:
    """One line for a result: its labels, or its failure."""
    if result["ok"]:
        return push.format_result(result["job_id"], result)
    error = result["error"]  # ids and messages come from whoever may enqueue: no terminal escapes, one line each
    return f"{shown(result['job_id']):<28} FAILED {shown(str(error['type']))}: {shown(str(error['message']))}"


def listen(producer: Producer, args: argparse.Namespace) -> int:
    """Print results as they come (one JSON line each with --json): from the durable feed through a consumer
    group with --group (at least once), else from the best-effort channel."""
    show = dumps_json if args.json else result_line
    if args.group:
        feed = producer.results(args.group, consumer=args.consumer, start=args.start, claim_idle_s=args.claim_idle_s)
        print(f"reading {producer.queue.stream} as {feed.consumer} of group {args.group}", file=sys.stderr, flush=True)
        for count, result in enumerate(feed, start=1):
            print(show(result), flush=True)
            if args.count and count >= args.count:
                feed.ack()  # printed: done with it
                return 0
        return 0
    with producer.subscribe() as sub:
        print(f"listening on {producer.channel}", file=sys.stderr, flush=True)
        for count, result in enumerate(sub, start=1):
            print(show(result), flush=True)
            if args.count and count >= args.count:
                return 0
    return 0


def add_listen_parser(sub: argparse._SubParsersAction) -> None:
    """``listen``: the channel by default, the durable feed with ``--group``."""
    p = sub.add_parser("listen", help="print results as they come: the durable feed with --group, else the channel")
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per line (bytes as {"$bytes": base64}, timestamps as ISO 8601)',
    )
    p.add_argument("--count", type=int, default=0, help="exit after this many results")
    p.add_argument(
        "--group",
        help="read the durable feed <queue>:results:stream as this consumer group "
        "(at least once); without it: the results channel (best-effort)",
    )
    p.add_argument(
        "--consumer",
        help="consumer name within the group (default host:pid); the same name after a "
        "restart gets back what it left unacknowledged",
    )
    p.add_argument(
        "--start",
        default="$",
        help="where a new group starts: $ (results from now on, the default) or 0 (all the feed still holds)",
    )
    p.add_argument(
        "--claim-idle-s",
        type=float,
        default=30.0,
        help="claim entries other consumers of the group left unacknowledged this long (default 30)",
    )


def add_common_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after its name (after it, they override)."""

    def default(value: str) -> str:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--redis-url",
        default=default(os.environ.get("REDIS_URL", "redis://localhost:6379/0")),
        help="Redis URL (env REDIS_URL)",
    )
    parser.add_argument(
        "--queue",
        default=default(os.environ.get("PRODUCER_QUEUE", DEFAULT_QUEUE)),
        help="queue to push to and read from; env PRODUCER_QUEUE (not WORKER_QUEUE, which may list several)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producer", description="Send images, read results.")
    add_common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)
    push.add_parser(sub)
    add_listen_parser(sub)
    p_status = sub.add_parser("status", help="queue depth, failed count, live workers, results feed groups")
    p_status.add_argument("--json", action="store_true", help="print JSON for scripts")
    dashboard.add_parser(sub)
    backfill.add_parser(sub)
    requeue.add_parser(sub)
    for command_parser in sub.choices.values():
        add_common_options(command_parser, top=False)
    args = parser.parse_args(argv)
    if args.command == "dashboard":
        return dashboard.run(args.redis_url, args, password=os.environ.get("DASHBOARD_PASSWORD"))
    if args.command in ("backfill", "requeue"):
        return backfill.main(args) if args.command == "backfill" else requeue.main(args)
    options = JobOptions(
        wait_replicas=getattr(args, "wait_replicas", 0), wait_timeout_ms=getattr(args, "wait_timeout_ms", 1000)
    )
    producer = Producer(args.redis_url, queue=args.queue, options=options)
    try:
        if args.command == "status":
            return status(producer, args)
        return push.push(producer, args) if args.command == "push" else listen(producer, args)
    except KeyboardInterrupt:
        return 130
    except (redis.ConnectionError, redis.TimeoutError, ShardUnavailable) as exc:  # one line, not a traceback
        print(f"python -m producer {args.command}: cannot reach Redis: {exc}", file=sys.stderr)
        return 2
    except NotReplicated as exc:  # written on the primary, not yet on enough replicas: say so, one line
        print(f"python -m producer {args.command}: {exc}", file=sys.stderr)
        return 1
    except ProtocolError as exc:  # an image or its meta refused before anything was sent
        print(f"python -m producer {args.command}: {exc}", file=sys.stderr)
        return 2
    finally:
        producer.close()


if __name__ == "__main__":
    sys.exit(main())
