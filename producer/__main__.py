"""``python -m producer``: push images to the classify queue, read results (feed or channel), show status."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from . import backfill, dashboard, requeue
from .client import Producer
from .errors import JobFailed, JobTimeout, NotReplicated, ShardUnavailable
from .jobdata import JobOptions
from .jsonout import dumps_json
from .wire.jobs import DEFAULT_QUEUE, ImageRef, ImageTooLarge, ProtocolError, check_image_size

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


@dataclass(frozen=True)
class Pushed:
    """One image of a push: how it is named (``name`` in result lines, ``label`` in the list of ids), and its
    job id once enqueued, or why it was not."""

    name: str
    label: str
    job_id: str | None = None
    refused: str = ""


def enqueue_images(producer: Producer, paths: list[Path], refs: list[ImageRef]) -> list[Pushed]:
    """Enqueue the images in one call; a file over the size limit is refused (not sent) and the rest go.
    A shard that cannot be reached stops only its own images: the others are enqueued, and each image is
    marked with what became of it."""
    items: list[Path | ImageRef] = []
    images: list[Pushed] = []
    for path in paths:
        try:
            check_image_size(path.stat().st_size, producer.options.max_image_bytes)
        except ImageTooLarge as exc:
            images.append(Pushed(path.name, str(path), refused=f"{exc.error['type']}: {exc.error['message']}"))
            continue
        items.append(path)
    items += refs
    if not items:
        return images
    metas = [{"url": item.url} if isinstance(item, ImageRef) else {"path": str(item)} for item in items]
    try:
        ids, lost, why = producer.enqueue_many(items, metas=metas), set(), ""
    except ShardUnavailable as exc:
        if not exc.enqueued:
            raise  # nothing went anywhere: Redis cannot be reached
        ids, lost = exc.ids, set(exc.not_enqueued)
        why = f"shard {', '.join(exc.shards)} is unavailable"
        print(f"push: {exc}; push the images marked NOT ENQUEUED again", file=sys.stderr)
    for item, job_id in zip(items, ids, strict=True):
        name, label = (item.url, item.url) if isinstance(item, ImageRef) else (item.name, str(item))
        images.append(Pushed(name, label, refused=why) if job_id in lost else Pushed(name, label, job_id))
    return images


def warn_if_no_worker(producer: Producer, sent: list[Pushed], timeout_s: float) -> None:
    """Say at once when no live worker serves the queue on a shard that got jobs: the wait is in vain unless
    one starts. (Silent when it cannot tell: a user whose ACL may not read the worker keys.)"""
    counts = producer.live_workers()
    shards = {producer.shard_for(image.job_id).name for image in sent if image.job_id is not None}
    idle = sorted(name for name in shards if counts.get(name) == 0)
    if idle:
        where = f" on shard {', '.join(idle)}" if len(producer.shards) > 1 else ""
        print(
            f"push: no live worker serves queue {producer.queue.name}{where}: waiting {timeout_s:g} s in all "
            "for one to start",
            file=sys.stderr,
            flush=True,
        )


def push(producer: Producer, args: argparse.Namespace) -> int:
    """Enqueue the images (files, and URLs by reference) in one round trip; with --wait print each result and a
    summary. Exit 1 when an image failed, timed out or was not enqueued."""
    paths, urls = expand(args.paths), args.url or []
    if not paths and not urls:
        raise SystemExit("push: no images found")
    try:
        refs = [ImageRef(url) for url in urls]
    except ProtocolError as exc:
        raise SystemExit(f"push: --url: {exc}") from None
    start = time.monotonic()
    images = enqueue_images(producer, paths, refs)
    sent = [image for image in images if image.job_id is not None]
    unsent = len(images) - len(sent)
    print(f"enqueued {len(sent)} image(s) on queue {producer.queue.name}", file=sys.stderr)
    if not args.wait:
        for image in images:
            print(f"{image.job_id} {image.label}" if image.job_id else f"{image.label} NOT ENQUEUED {image.refused}")
        return 1 if unsent else 0
    if sent:
        warn_if_no_worker(producer, sent, args.timeout)
    ok, failed, bar = 0, 0, Progress(len(images), start) if sys.stderr.isatty() else None
    last_result = time.monotonic()  # the wait ends when no result came for --timeout s: once for all images
    for image in images:
        if image.job_id is None:
            failed += 1
            line = f"{image.name:<28} NOT ENQUEUED {image.refused}"
        else:
            try:
                left = max(0.0, last_result + args.timeout - time.monotonic())
                line = format_result(image.name, producer.result(image.job_id, timeout=left))
                ok, last_result = ok + 1, time.monotonic()
            except JobFailed as exc:
                failed, last_result = failed + 1, time.monotonic()
                line = f"{image.name:<28} FAILED {exc.error.get('type')}: {exc.error.get('message')}"
            except JobTimeout:
                failed += 1
                line = f"{image.name:<28} TIMEOUT no result came for {args.timeout:g} s"
        if bar is None:
            print(line, flush=True)
        else:  # a terminal: each image's line (top-3 labels, or its failure) above one progress bar
            bar.update(failed, line)
    if bar is not None:
        bar.close()
    elapsed = time.monotonic() - start
    print(
        f"{len(sent)} sent, {ok} ok, {len(sent) - ok} failed"
        + (f", {unsent} not enqueued (push them again)" if unsent else "")
        + f" in {elapsed:.2f} s: {len(sent) / elapsed:.1f} images/s end to end"
    )
    return 1 if ok < len(images) else 0


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
    p_push.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="with --wait: give up when no result has come for this many seconds (default 60)",
    )
    p_push.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        metavar="N",
        help="after each enqueue, wait for N Redis replicas to hold the jobs (WAIT), else fail: no job whose "
        "enqueue returned is lost in a failover (see RELIABILITY.md)",
    )
    p_push.add_argument("--wait-timeout-ms", type=int, default=1000, help="how long --wait-replicas waits")
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
        return push(producer, args) if args.command == "push" else listen(producer, args)
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
