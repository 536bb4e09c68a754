"""``python -m producer push``: enqueue image files, folders, globs and URLs; with --wait, print each result."""

from __future__ import annotations

import argparse
import glob
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .client import Producer
from .errors import JobFailed, JobTimeout, ShardUnavailable
from .wire.jobs import ImageRef, ImageTooLarge, ProtocolError, check_image_size
from .wire.printable import shown

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
    top = ", ".join(f"{shown(str(label))} {score:.3f}" for label, score in result["topk"][:3])
    return f"{shown(name):<28} {top}  ({result['timings_ms']['total']:.0f} ms)"


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
        print(
            f"push: {exc}; push the images marked NOT ENQUEUED again (one whose shard could not be asked, or "
            "not confirmed on a replica, may be queued already: pushed again, it runs twice)",
            file=sys.stderr,
        )
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


def _outcome(producer: Producer, image: Pushed, left_s: float, timeout_s: float) -> tuple[str, str]:
    """One image's line and outcome (ok, failed, timeout or unsent), its result waited for up to ``left_s``."""
    if image.job_id is None:
        return f"{image.name:<28} NOT ENQUEUED {image.refused}", "unsent"
    try:
        return format_result(image.name, producer.result(image.job_id, timeout=left_s)), "ok"
    except JobFailed as exc:
        return f"{image.name:<28} FAILED {exc.error.get('type')}: {exc.error.get('message')}", "failed"
    except JobTimeout:
        return f"{image.name:<28} TIMEOUT no result came for {timeout_s:g} s", "timeout"


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
        line, outcome = _outcome(producer, image, max(0.0, last_result + args.timeout - time.monotonic()), args.timeout)
        ok, failed = ok + (outcome == "ok"), failed + (outcome != "ok")
        if outcome in ("ok", "failed"):
            last_result = time.monotonic()
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``push``: files, folders, globs, and URLs by reference."""
    p = sub.add_parser("push", help="enqueue image files, folders or globs, and image URLs (--url)")
    p.add_argument("paths", nargs="*")
    p.add_argument(
        "--url",
        nargs="+",
        action="extend",
        metavar="URL",
        help="images by reference: the worker fetches each URL (its --fetch-allow must permit it)",
    )
    p.add_argument("--wait", action="store_true", help="wait and print each result (top-3 labels)")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="with --wait: give up when no result has come for this many seconds (default 60)",
    )
    p.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        metavar="N",
        help="after each enqueue, wait for N Redis replicas to hold the jobs (WAIT), else fail: no job whose "
        "enqueue returned is lost in a failover (see RELIABILITY.md)",
    )
    p.add_argument("--wait-timeout-ms", type=int, default=1000, help="how long --wait-replicas waits")
