"""``python -m producer``: push images to the classify queue, read results (feed or channel), show status."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import redis

from . import dashboard
from .client import Producer
from .errors import JobFailed, JobTimeout, ShardUnavailable
from .jsonout import dumps_json
from .wire.jobs import DEFAULT_QUEUE, ImageRef, ProtocolError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


def expand(patterns: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns, in the order given."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or [pattern]
        for match in map(Path, matches):
            if match.is_dir():
                paths += sorted(p for p in match.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            elif match.is_file():
                paths.append(match)
            else:
                raise SystemExit(f"push: no such file: {match}")
    return paths


def format_result(name: str, result: dict) -> str:
    """One line: name, top-3 labels with scores, and the time from enqueue to result."""
    top = ", ".join(f"{label} {score:.3f}" for label, score in result["topk"][:3])
    return f"{name:<28} {top}  ({result['timings_ms']['total']:.0f} ms)"


class Progress:
    """A one-line progress bar on stderr (done/total, ok, failed, images/s), with result lines above it."""

    def __init__(self, total: int, start: float, width: int = 30) -> None:
        self.total, self.start, self.width, self.done = total, start, width, 0

    def update(self, failed: int, message: str | None = None) -> None:
        """Count one more image; print ``message`` (its result line) on stdout above the bar."""
        self.done += 1
        if message:
            sys.stderr.write("\r\033[K")  # clear the bar, write the line where it was, then redraw the bar
            sys.stderr.flush()
            print(message, flush=True)
        filled = self.width * self.done // max(1, self.total)
        rate = self.done / max(1e-9, time.monotonic() - self.start)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"ok {self.done - failed} failed {failed} {rate:.1f} images/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def push(producer: Producer, args: argparse.Namespace) -> int:
    """Enqueue the images (files, and URLs by reference) in one round trip; with --wait print each result and a
    summary."""
    paths, urls = expand(args.paths), args.url or []
    if not paths and not urls:
        raise SystemExit("push: no images found")
    try:
        refs = [ImageRef(url) for url in urls]
    except ProtocolError as exc:
        raise SystemExit(f"push: --url: {exc}") from None
    start = time.monotonic()
    metas = [{"path": str(p)} for p in paths] + [{"url": url} for url in urls]
    ids = producer.enqueue_many([*paths, *refs], metas=metas)
    print(f"enqueued {len(ids)} image(s) on queue {producer.queue.name}", file=sys.stderr)
    if not args.wait:
        for job_id, name in zip(ids, [*map(str, paths), *urls], strict=True):
            print(f"{job_id} {name}")
        return 0
    failed, bar = 0, Progress(len(ids), start) if sys.stderr.isatty() else None
    for job_id, name in zip(ids, [p.name for p in paths] + urls, strict=True):
        try:
            line = format_result(name, producer.result(job_id, timeout=args.timeout))
        except JobFailed as exc:
            failed += 1
            line = f"{name:<28} FAILED {exc.error.get('type')}: {exc.error.get('message')}"
        except JobTimeout as exc:
            failed += 1
            line = f"{name:<28} TIMEOUT {exc}"
        if bar is None:
            print(line, flush=True)
        else:  # a terminal: each image's line (top-3 labels, or its failure) above one progress bar
            bar.update(failed, line)
    if bar is not None:
        bar.close()
    elapsed = time.monotonic() - start
    print(
        f"{len(ids)} sent, {len(ids) - failed} ok, {failed} failed in {elapsed:.2f} s: "
        f"{len(ids) / elapsed:.1f} images/s end to end"
    )
    return 1 if failed else 0


def result_line(result: dict) -> str:
    """One line for a result: its labels, or its failure."""
    if result["ok"]:
        return format_result(result["job_id"], result)
    return f"{result['job_id']:<28} FAILED {result['error']['type']}: {result['error']['message']}"


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
    p_push = sub.add_parser("push", help="enqueue image files, folders or globs, and image URLs (--url)")
    p_push.add_argument("paths", nargs="*")
    p_push.add_argument(
        "--url",
        nargs="+",
        action="extend",
        metavar="URL",
        help="images by reference: the worker fetches each URL (its --fetch-allow must permit it)",
    )
    p_push.add_argument("--wait", action="store_true", help="wait and print each result (top-3 labels)")
    p_push.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per result")
    add_listen_parser(sub)
    p_status = sub.add_parser("status", help="queue depth, failed count, live workers, results feed groups")
    p_status.add_argument("--json", action="store_true", help="print JSON for scripts")
    dashboard.add_parser(sub)
    for command_parser in sub.choices.values():
        add_common_options(command_parser, top=False)
    args = parser.parse_args(argv)
    if args.command == "dashboard":
        return dashboard.run(args.redis_url, args, password=os.environ.get("DASHBOARD_PASSWORD"))
    producer = Producer(args.redis_url, queue=args.queue)
    try:
        if args.command == "status":
            from .status import gather, render

            several = len(producer.shards) > 1  # every shard of a sharded queue, in turn
            statuses = [
                gather(shard.connection, args.queue) | ({"shard": shard.name} if several else {})
                for shard in producer.shards
            ]
            if args.json:
                print(json.dumps(statuses[0] if len(statuses) == 1 else statuses, indent=1))
            else:
                print("\n\n".join((f"shard {st['shard']}\n" if "shard" in st else "") + render(st) for st in statuses))
            return 0
        return push(producer, args) if args.command == "push" else listen(producer, args)
    except KeyboardInterrupt:
        return 130
    except (redis.ConnectionError, redis.TimeoutError, ShardUnavailable) as exc:  # one line, not a traceback
        print(f"python -m producer {args.command}: cannot reach Redis: {exc}", file=sys.stderr)
        return 2
    finally:
        producer.close()


if __name__ == "__main__":
    sys.exit(main())
