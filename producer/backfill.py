"""``python -m producer backfill MANIFEST --out results.jsonl``: classify every image a manifest lists (URLs or local
paths, fetched by the workers), resumable, with results as JSON lines, a summary by outcome and the failed lines in
a file of their own, a manifest to run again. The loop is ``producer.backfill_run``; see docs/backfill.md."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import redis

from .backfill_out import FAILED, OutFile, OutputBusy, write_failed
from .backfill_run import Backfill, BackfillSettings
from .client import Producer
from .jobdata import JobOptions
from .manifest import BackfillIdentity, ManifestLine, read_manifest
from .progress import Progress
from .wire import keys
from .wire.serializer import SerializationError, loads

log = logging.getLogger(__name__)

TAG_POLL_S = 1.0


class BackfillError(Exception):
    """A backfill that cannot start (one line says why)."""


def announced_tags(producer: Producer) -> set[str]:
    """The model tags the queue's workers announce, over every shard (none: no worker ever started)."""
    tags = set()
    for shard in producer.shards:
        raw = shard.connection.get(keys.announcement(producer.queue.name))
        try:
            announced = loads(raw) if raw else None
        except SerializationError:
            announced = None
        if isinstance(announced, dict) and announced.get("tag"):
            tags.add(str(announced["tag"]))
    return tags


def resolve_tag(producer: Producer, given: str | None, timeout_s: float, say: TextIO) -> str:
    """The model tag the backfill is for: ``given``, else the one the workers announce (waiting up to
    ``timeout_s`` for a first worker). ``BackfillError`` when the shards' workers run different models."""
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        tags = announced_tags(producer)
        if given:
            if tags and given not in tags:
                print(
                    f"backfill: the workers announce {', '.join(sorted(tags))}; this backfill is for {given} "
                    "(--model-tag), and each result names the model that ran it",
                    file=say,
                    flush=True,
                )
            return given
        if len(tags) == 1:
            return tags.pop()
        if tags:
            raise BackfillError(f"the workers announce different models ({', '.join(sorted(tags))}): pass --model-tag")
        if time.monotonic() >= deadline:
            raise BackfillError(f"no worker announced a model within {timeout_s:g} s: start one, or pass --model-tag")
        if not told:
            told = True
            print(
                f"backfill: no worker has announced a model for queue {producer.queue.name} yet: waiting for one "
                "to start (or pass --model-tag)",
                file=say,
                flush=True,
            )
        time.sleep(TAG_POLL_S)


def unanswered(settings: BackfillSettings, out: OutFile) -> Iterator[ManifestLine]:
    """The manifest lines the output does not answer yet."""
    return (
        line for line in read_manifest(settings.manifest, settings.fetch_root) if not out.answered.state(line.number)
    )


def count_lines(settings: BackfillSettings, out: OutFile) -> tuple[int, int]:
    """How many lines the manifest holds, and how many of them the output answers; ``BackfillError`` if it answers
    a line for another URL than the manifest holds now (the manifest changed: its line numbers name other images)."""
    total = done = 0
    for line in read_manifest(settings.manifest, settings.fetch_root):
        total += 1
        if out.answered.state(line.number):
            done += 1
            if not out.answered.same_url(line):
                raise BackfillError(
                    f"line {line.number} of {settings.manifest} is not the image {settings.out} answered for it: "
                    "the manifest changed since; write to a new --out"
                )
    return total, done


def drop_group(producer: Producer, group: str) -> None:
    """Destroy the backfill's consumer group once every line is answered (a user whose ACL forbids it leaves it)."""
    for shard in producer.shards:
        try:
            shard.connection.xgroup_destroy(producer.queue.stream, group)
        except redis.ResponseError as exc:  # NOPERM under the producer's ACL: an admin may remove it
            log.info("backfill: consumer group %s stays on %s (%s)", group, shard.name, exc)
        except redis.RedisError as exc:  # that shard is away: the backfill is done all the same
            log.warning("backfill: consumer group %s stays on %s, which did not answer (%s)", group, shard.name, exc)


def summary(total: int, outcomes: Counter[str], left: int, settings: BackfillSettings) -> str:
    """The closing lines: lines by outcome, and what to do about the rest."""
    failed = {kind: n for kind, n in outcomes.items() if kind != "ok"}
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0])))
    text = f"{total} lines: {outcomes['ok']} ok, {sum(failed.values())} failed" + (f" ({kinds})" if kinds else "")
    if left:
        text += (
            f", {left} unanswered (no result for {settings.timeout_s:g} s): run the same command again to collect them"
        )
    if failed:
        text += f"\nfailed lines: {settings.failed_out} (a manifest: run it again once fixed)"
    return text


def answer_lines(
    producer: Producer, settings: BackfillSettings, out: OutFile, lines: tuple[int, int], say: TextIO
) -> str:
    """Run the loop over the lines the output lacks (``lines``: the manifest's total, and those answered); one
    line on how it went."""
    tag = resolve_tag(producer, settings.model_tag, settings.timeout_s, say)
    began = out.answered.models
    if settings.model_tag is None and began and tag not in began:  # a new version since: not a second backfill
        raise BackfillError(
            f"{settings.out} holds answers of {', '.join(sorted(began))} and the workers now announce {tag}: pass "
            f"--model-tag {sorted(began)[0]} to finish this backfill (the lines left are answered by what the "
            "workers serve, and each record names it), or write to a new --out"
        )
    identity = BackfillIdentity.of(settings.manifest, settings.out, tag)
    counts = producer.live_workers()
    if counts and all(count == 0 for count in counts.values()):  # None: this user may not tell
        print(f"backfill: no live worker serves queue {producer.queue.name}: the jobs wait for one", file=say)
    progress = Progress(*lines, stream=say, every_s=settings.progress_every_s)
    started = time.monotonic()
    run = Backfill(producer, settings, identity, out, progress)
    complete = run.run(unanswered(settings, out))
    progress.close()
    if complete:
        drop_group(producer, identity.group)
    elapsed = time.monotonic() - started
    return (
        f" (model {tag}, group {identity.group}); this run: {run.answered} answered in {elapsed:.1f} s "
        f"({run.answered / elapsed:.1f} images/s)"
    )


def run_backfill(producer: Producer, settings: BackfillSettings, say: TextIO) -> int:
    """Run a backfill to its end: 0 when every line is answered ok, 1 when one failed or is left unanswered."""
    out = OutFile(settings.out).open()
    try:
        total, done = count_lines(settings, out)
        how = answer_lines(producer, settings, out, (total, done), say) if done < total else ""
        failed = write_failed(
            settings.failed_out,
            (
                line
                for line in read_manifest(settings.manifest, settings.fetch_root)
                if out.answered.state(line.number) == FAILED
            ),
        )
        left = total - count_lines(settings, out)[1]
        print(f"backfill {settings.manifest} -> {settings.out}{how}")
        print(summary(total, out.answered.outcomes, left, settings), flush=True)
        return 0 if not failed and not left else 1
    finally:
        out.close()


def settings_from(args: argparse.Namespace) -> BackfillSettings:
    """The settings of ``python -m producer backfill``'s arguments."""
    if args.max_in_flight < 1:
        raise BackfillError("--max-in-flight must be at least 1")
    return BackfillSettings(
        manifest=args.manifest,
        out=args.out,
        failed_out=args.failed_out or args.out.with_name(args.out.name + ".failed.txt"),
        model_tag=args.model_tag,
        fetch_root=args.fetch_root,
        max_in_flight=args.max_in_flight,
        max_queue_length=args.max_queue_length,
        result_ttl_s=args.result_ttl_s,
        timeout_s=args.timeout,
        check_every_s=args.check_every_s,
        progress_every_s=args.progress_every_s,
        cache=args.cache,
    )


def main(args: argparse.Namespace) -> int:
    """``python -m producer backfill``: 0 all ok, 1 a line failed or is unanswered, 2 it could not run."""
    try:
        settings = settings_from(args)
        limit = settings.max_queue_length or settings.max_in_flight
        options = JobOptions(max_queue_length=limit, result_ttl_s=settings.result_ttl_s)
        producer = Producer(args.redis_url, queue=args.queue, options=options)
    except (BackfillError, ValueError) as exc:
        print(f"python -m producer backfill: {exc}", file=sys.stderr)
        return 2
    try:
        return run_backfill(producer, settings, sys.stderr)
    except (BackfillError, OutputBusy, OSError) as exc:
        print(f"python -m producer backfill: {exc}", file=sys.stderr)
        return 2
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"python -m producer backfill: cannot reach Redis: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("backfill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        producer.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``backfill``'s arguments."""
    p = sub.add_parser(
        "backfill",
        help="classify every image a manifest lists (one URL or path a line), resumably, into JSON lines",
        description="Classify every image a manifest lists (one http(s):// or file:// URL, or local path, a line; "
        "the workers fetch them: their --fetch-allow / --fetch-root must permit it), at most --max-in-flight at a "
        "time, writing one JSON line per manifest line to --out as results come. Killed, run it again with the "
        "same arguments: it resumes, and enqueues nothing twice. Exit 1 when a line failed (listed in "
        "--failed-out) or is unanswered. See docs/backfill.md.",
    )
    p.add_argument("manifest", type=Path, help="one image a line; blank lines and # comments are skipped")
    p.add_argument("--out", type=Path, required=True, help="results, one JSON object per manifest line (appended)")
    p.add_argument("--failed-out", type=Path, help="the failed lines, a manifest to run again (default OUT.failed.txt)")
    p.add_argument("--model-tag", help="name@version this backfill is for (default: what the queue's workers announce)")
    p.add_argument(
        "--fetch-root",
        type=Path,
        help="the workers' --fetch-root: relative paths are taken under it and paths outside it are refused "
        "(default: relative paths are taken from the manifest's directory)",
    )
    p.add_argument("--max-in-flight", type=int, default=1000, help="jobs enqueued and not yet answered (1000)")
    p.add_argument(
        "--max-queue-length",
        type=int,
        help="enqueue only while the queue holds fewer jobs, other traffic included (default: --max-in-flight)",
    )
    p.add_argument(
        "--result-ttl-s",
        type=int,
        default=60,
        help="keep each finished job in Redis this long (60): its result is in the feed and the output; a failed "
        "one is kept a day, for requeue",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="give up when no line is answered this long (600)")
    p.add_argument(
        "--check-every-s",
        type=float,
        default=5.0,
        help="when the feed brought none of our results this long, look for them in RQ's records (5)",
    )
    p.add_argument("--progress-every-s", type=float, default=5.0, help="a progress line this often off a terminal")
    p.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the workers keep each result in the result cache (their --cache-ttl-s), so a web backend's "
        "enqueue(..., cache=True) of the same photo is answered from it (default; --no-cache: not)",
    )
