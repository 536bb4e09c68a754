"""A catalog backfill vs the same images pushed with ``push --url ... --wait``, in one run: images/s and queue depth.

``python -m bench.backfill [--images 2000] [--model tiny] [--write]``. One Redis, one worker reading ``file://``
URLs under a fetch root (small JPEGs: the overhead regime, where the producer's side shows). Each way is the
CLI a user runs, timed from its start to its exit (interpreter start included), beside the rate it reports
itself; a thread samples the queue's length meanwhile. The backfills write to fresh outputs, so each runs every
job anew.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from bench.devserver import RedisServer

from .common import ROOT, ensure_model, pythonpath, report, small_jpegs, table


class QueueWatch:
    """The queue's longest length while a run lasts (sampled every 10 ms)."""

    def __init__(self, url: str) -> None:
        self.conn = redis.Redis.from_url(url)
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, int(self.conn.llen("rq:queue:classify")))

    def __enter__(self) -> QueueWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.conn.close()


def child_cpu_s() -> float:
    """CPU seconds of the children that ended (and were waited for) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli(url: str, *args: str) -> tuple[float, str, int, float]:
    """Run ``python -m producer``: wall seconds, stdout, peak queue length, its CPU seconds."""
    env = {"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"}
    cpu = child_cpu_s()
    with QueueWatch(url) as watch:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "producer", "--redis-url", url, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"producer {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, done.stdout, watch.peak, child_cpu_s() - cpu


def reported_rate(stdout: str) -> float:
    """The images/s the command printed (push: end to end; backfill: this run's)."""
    found = re.search(r"([\d.]+) images/s", stdout)
    return float(found.group(1)) if found else float("nan")


def start_worker(url: str, model: Path, root: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "worker", "--model", str(model), "--redis-url", url, "--fetch-root", str(root)]
    args += ["--batch-size", "64", "--log-level", "WARNING"]
    proc = subprocess.Popen(args, cwd=ROOT, env={"PYTHONPATH": pythonpath(), "PATH": "/usr/bin:/bin"})
    conn = redis.Redis.from_url(url)
    deadline = time.monotonic() + 120
    while not conn.exists("rq:adclassify:model:classify"):  # announced: warmed up and about to listen
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the worker did not start")
        time.sleep(0.1)
    conn.close()
    return proc


def measure(images: int, model: Path) -> list[list[object]]:
    """Rows: how, images, wall s, images/s by the wall clock, images/s as reported, the queue's peak length, and
    the command's CPU seconds."""
    server = RedisServer().start()
    worker = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        photos = small_jpegs(8, 48)
        for i, data in enumerate(photos):
            (root / f"{i}.jpg").write_bytes(data)
        urls = [(root / f"{n % len(photos)}.jpg").as_uri() for n in range(images)]
        manifest = Path(tmp) / "catalog.txt"
        manifest.write_text("".join(f"{n % len(photos)}.jpg\n" for n in range(images)))
        try:
            worker = start_worker(server.url, model, root)
            cli(server.url, "push", "--wait", "--url", *urls[:200])  # warm-up
            rows = []
            wall, out, peak, cpu = cli(server.url, "push", "--wait", "--timeout", "300", "--url", *urls)
            rows.append(["push --url ... --wait", images, wall, images / wall, reported_rate(out), peak, cpu])
            for window in (1000, 100):
                out_file = Path(tmp) / f"out-{window}.jsonl"
                args = [str(manifest), "--out", str(out_file), "--fetch-root", str(root)]
                wall, out, peak, cpu = cli(server.url, "backfill", *args, "--max-in-flight", str(window))
                how = f"backfill --max-in-flight {window}"
                rows.append([how, images, wall, images / wall, reported_rate(out), peak, cpu])
            return rows
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=60)
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", choices=["tiny", "pool224"], default="tiny")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    rows = measure(args.images, ensure_model(args.model))
    head = ["how", "images", "wall s", "images/s (wall)", "images/s (reported)", "queue peak", "CLI CPU ms/image"]
    cells = [
        [r[0], r[1], round(r[2], 2), round(r[3], 1), round(r[4], 1), r[5], round(1000 * r[6] / r[1], 3)] for r in rows
    ]
    body = table(head, cells)
    body += (
        f"\n\nOne worker ({args.model} model, batch 64, CPU) reading 48 px JPEGs by `file://` URL; each way is the "
        'CLI a user runs, its wall time from start to exit (interpreter start included); "reported" is the rate '
        "the command prints (push: enqueue to last result; backfill: this run's answers over its loop); CLI CPU is the "
        "command's own user + system time (interpreter start included) per image. `push` "
        "puts every job on the queue at once and waits for each result in turn (one XREAD per job); the backfill "
        "keeps at most --max-in-flight jobs queued and reads results from the feed through its consumer group, "
        "writing each one to its JSON-lines output as it comes."
    )
    report("backfill", "Backfill vs push: the same images by reference", body, args.write)


if __name__ == "__main__":
    main()
