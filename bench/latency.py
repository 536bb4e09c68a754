"""Latency under load: open-loop Poisson arrivals at 25/50/75/90% of measured capacity.

``python -m bench.latency [--device cpu] [--seconds 15] [--write]``

One worker (EfficientNet-Lite0, the real photos). Capacity is measured first (a burst of jobs
through the running worker). Each level reports p50/p95/p99 from enqueue to result received,
split into queue wait, decode, infer and publish, and the batch sizes the worker formed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.devserver import RedisServer, find_redis_server, wait_until
from producer import Producer

from .common import (
    OUT,
    ROOT,
    ensure_model,
    exit_on_sigterm,
    percentile,
    photos,
    pythonpath,
    report,
    table,
    unique_payloads,
    with_note,
)
from .plots import latency_plot

LEVELS = (0.25, 0.5, 0.75, 0.9)


class Collector:
    """Subscribes to the results channel and records each result with its arrival time."""

    def __init__(self, producer: Producer) -> None:
        self.results: dict[str, tuple[float, dict]] = {}
        self._sub = producer.subscribe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._sub.get(timeout=0.2)
            if message is not None:
                self.results[message["job_id"]] = (time.time(), message)

    def wait(self, ids: list[str], timeout_s: float) -> None:
        wait_until(lambda: all(i in self.results for i in ids), timeout_s, f"{len(ids)} results")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sub.close()


def capacity(producer: Producer, collector: Collector, payloads: list[bytes], jobs: int) -> float:
    """Images/s of the running worker on a burst of ``jobs`` (after its first batch)."""
    ids = producer.enqueue_many(unique_payloads(payloads, jobs, "capacity"))  # ours runs a repeat in a batch once
    collector.wait(ids, 600)
    times = sorted(collector.results[i][0] for i in ids)
    after = [t for t in times if t > times[0]]
    return len(after) / (times[-1] - times[0])


def open_loop(producer: Producer, collector: Collector, payloads: list[bytes], rate: float, seconds: float) -> dict:
    """Poisson arrivals at ``rate`` for ``seconds``; latency percentiles and their parts, in ms."""
    rng = random.Random(7)
    sent: dict[str, float] = {}
    start = time.time()
    due = start
    while due - start < seconds:
        due += rng.expovariate(rate)
        time.sleep(max(0.0, due - time.time()))
        payload = with_note(payloads[len(sent) % len(payloads)], f"latency {len(sent)}")
        # latency counts from when the job was due: a producer that falls behind adds to it (no coordinated omission)
        sent[producer.enqueue(payload)] = due
    achieved = len(sent) / max(time.time() - start, 1e-9)
    collector.wait(list(sent), 120 + seconds)
    e2e, parts, batches = [], {"queue": [], "decode": [], "infer": [], "publish": []}, Counter()
    for job_id, sent_at in sent.items():
        received, result = collector.results[job_id]
        total = (received - sent_at) * 1000
        timings = result["timings_ms"]
        e2e.append(total)
        for name in ("queue", "decode", "infer"):
            parts[name].append(timings[name])
        parts["publish"].append(max(0.0, total - timings["total"]))
        batches[result.get("batch", 1)] += 1
    return {
        "jobs": len(sent),
        "offered": len(sent) / seconds,
        "achieved": achieved,
        "e2e": e2e,
        "parts": parts,
        "batches": batches,
    }


def start_worker(url: str, model: str, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        model,
        "--redis-url",
        url,
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    if args.decode:
        cmd += ["--decode", args.decode]
    out = log.open("wb")
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath()}, stderr=out)


def pipeline_cost(log: Path) -> str:
    """The worker's own p50s from its exit log line (``taken->decode``, ``forward end->published``)."""
    match = re.search(r"pipeline cost p50: (.*)$", log.read_text(errors="replace"), re.M)
    return match.group(1) if match else ""


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", default="4")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=15.0, help="per load level")
    parser.add_argument("--capacity-jobs", type=int, default=120)
    parser.add_argument("--model", choices=["lite0", "tiny"], default="lite0")
    parser.add_argument("--decode", choices=["cpu", "gpu", "auto"], help="the worker's --decode (default: its own)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    server = RedisServer(binary=find_redis_server(prefer_embedded=False)).start()
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "latency-worker.log"
    worker = start_worker(server.url, str(ensure_model(args.model)), args, log)
    try:
        rows, levels, cap = run_levels(server.url, args)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        server.stop()
    args.pipeline_cost = pipeline_cost(log)
    body = render(rows, levels, cap, args)
    name = f"latency-{args.decode}decode-" if args.decode else "latency-"
    title = f"Latency under load on {args.device}" + (f", --decode {args.decode}" if args.decode else "")
    report(f"{name}{args.device.split(':')[0]}", title, body, args.write)


def run_levels(url: str, args: argparse.Namespace) -> tuple[list[list], list[dict], float]:
    producer = Producer(url)
    from rq import Worker

    wait_until(lambda: Worker.all(connection=producer.connection), 300, "the worker to register")
    collector = Collector(producer)
    try:
        payloads = photos()
        cap = capacity(producer, collector, payloads, args.capacity_jobs)
        levels = [open_loop(producer, collector, payloads, f * cap, args.seconds) | {"level": f} for f in LEVELS]
    finally:
        collector.close()
    rows = []
    for lv in levels:
        pct = [percentile(lv["e2e"], q) for q in (50, 95, 99)]
        parts = [percentile(lv["parts"][n], 50) for n in ("queue", "decode", "infer", "publish")]
        rows.append([f"{lv['level']:.0%}", lv["jobs"], lv["offered"], round(lv["achieved"], 1), *pct, *parts])
    return rows, levels, cap


def render(rows: list[list], levels: list[dict], cap: float, args: argparse.Namespace) -> str:
    headers = [
        "load",
        "jobs",
        "offered/s",
        "sent/s (achieved)",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "queue p50",
        "decode p50",
        "infer p50",
        "publish p50",
    ]
    lines = [f"capacity {cap:.1f} images/s (batch size {args.batch_size}, max wait {args.max_wait_ms} ms)", ""]
    lines.append(table(headers, rows))
    lines.append("\nbatch sizes formed (jobs per size):\n")
    lines.append(
        table(["load", "histogram"], [[f"{lv['level']:.0%}", dict(sorted(lv["batches"].items()))] for lv in levels])
    )
    half = next(lv for lv in levels if lv["level"] == 0.5)
    f50, f99 = percentile(half["parts"]["infer"], 50), percentile(half["parts"]["infer"], 99)
    bound = args.max_wait_ms + f99 + f50 + 10
    p99 = percentile(half["e2e"], 99)
    verdict = "meets" if p99 <= bound else f"misses by {p99 - bound:.0f} ms"
    lines.append(
        f"\nAt 50% load p99 = {p99:.1f} ms; target max_wait + p99 forward + p50 forward + 10 ms = "
        f"{args.max_wait_ms:.0f} + {f99:.1f} + {f50:.1f} + 10 = {bound:.1f} ms: **{verdict}**."
    )
    if args.decode == "gpu":
        verdict = "meets" if p99 <= 15 else "misses"
        lines.append(f"\nGPU-decode target (issue 12): p99 <= 15 ms at 50% load: **{verdict}**.")
    if args.pipeline_cost:
        lines.append(
            f"\nThe pipeline's own cost over the run (worker log, p50 per job): {args.pipeline_cost}; "
            "target <= 2 ms each."
        )
    decode = f"{args.decode}decode-" if args.decode else ""
    png = latency_plot(levels, f"latency-{decode}{args.device.split(':')[0]}.png")
    if png:
        lines.append(f"\n![latency]({png})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
