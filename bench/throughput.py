"""Throughput side by side: our batch worker vs a plain RQ worker (and LitServe), plus pipeline efficiency.

``python -m bench.throughput [--regime overhead|compute|both] [--device cpu] [--write]``

- overhead regime: a tiny CNN on small JPEGs: what a GPU looks like, compute nearly free;
- compute regime: EfficientNet-Lite0 on the real photos; also LitServe (best of max_batch 1/4/8)
  and pipeline efficiency (end-to-end images/s / the same images decoded and classified in-process).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from producer.devserver import RedisServer, find_redis_server
from worker.images import Limits
from worker.model import load_model
from worker.tasks import decode_image

from .common import ensure_model, photos, report, small_jpegs, table
from .drain import Drain, drain


def in_process(model_path: str, payloads: list[bytes], batch: int, device: str, threads: int = 4) -> float:
    """Images/s decoding (thread pool) and classifying the same images at ``batch``, no Redis."""
    model = load_model(model_path, device, batch)
    model.warm_up(rounds=1)
    limits = Limits()

    def decode(data: bytes) -> torch.Tensor:
        return decode_image(data, model.info.preprocess, limits)

    with ThreadPoolExecutor(threads) as pool:
        model.predict(torch.stack(list(pool.map(decode, payloads[:batch]))))
        start = time.perf_counter()
        for i in range(0, len(payloads), batch):
            model.predict(torch.stack(list(pool.map(decode, payloads[i : i + batch]))))
        return len(payloads) / (time.perf_counter() - start)


def regime(name: str, url: str, args: argparse.Namespace) -> tuple[list[list], dict]:
    """Drain the same queue with both workers; in the compute regime add LitServe and in-process."""
    kind, jobs, batch = ("tiny", args.overhead_jobs, args.overhead_batch) if name == "overhead" else (
        "lite0", args.compute_jobs, args.compute_batch)  # fmt: skip
    model = str(ensure_model(kind))
    sources = small_jpegs() if name == "overhead" else photos()
    payloads = [sources[i % len(sources)] for i in range(jobs)]
    plain_jobs = payloads[: max(len(sources), jobs // args.plain_fraction)]
    ours, plain, ratios = alternate(url, model, payloads, plain_jobs, batch, args)
    rows = [
        [name, "ours (batch worker)", f"{ours.ok}/{ours.jobs}", ours.images_per_s,
         ours.images_per_s / plain.images_per_s, ours.round_trips_per_job, ours.commands_per_job],
        [name, "plain rq SimpleWorker", f"{plain.ok}/{plain.jobs}", plain.images_per_s, 1.0, plain.round_trips_per_job,
         plain.commands_per_job],
    ]  # fmt: skip
    extra = {"ours": ours.images_per_s, "plain": plain.images_per_s, "ratios": ratios, "ok": ours.ok == ours.jobs}
    if name == "compute":
        inproc = in_process(model, payloads, batch, args.device)
        extra["in_process"], extra["efficiency"] = inproc, ours.images_per_s / inproc
        rows.append([name, f"in-process, no Redis (batch {batch})", len(payloads), inproc,
                     inproc / plain.images_per_s, 0.0, 0.0])  # fmt: skip
        if not args.no_litserve:
            extra["litserve"] = litserve_rows(model, payloads, args, rows, plain.images_per_s)
    return rows, extra


def alternate(url: str, model: str, payloads: list[bytes], plain_jobs: list[bytes], batch: int,
              args: argparse.Namespace) -> tuple[Drain, Drain, list[float]]:  # fmt: skip
    """Drain with ours and plain RQ in turn, ``--repeats`` times; the median run of each, and every ratio."""
    ours, plain = [], []
    for _ in range(args.repeats):
        ours.append(drain("ours", url, model, payloads, batch=batch, device=args.device))
        plain.append(drain("rq", url, model, plain_jobs, device=args.device))
    ratios = [o.images_per_s / p.images_per_s for o, p in zip(ours, plain)]
    return _median(ours), _median(plain), ratios


def _median(runs: list[Drain]) -> Drain:
    return sorted(runs, key=lambda d: d.images_per_s)[len(runs) // 2]


def litserve_rows(model: str, payloads: list[bytes], args: argparse.Namespace, rows: list, plain: float) -> float:
    """LitServe at max_batch 1, 4 and 8 on the same photos; returns the best images/s."""
    from .litserve_client import measure

    best = 0.0
    for max_batch in (1, 4, 8):
        rate = measure(model, payloads[: args.litserve_requests], max_batch, args.device)
        rows.append(["compute", f"LitServe max_batch {max_batch} (HTTP, base64 JSON)", args.litserve_requests, rate,
                     rate / plain, "n/a", "n/a"])  # fmt: skip
        best = max(best, rate)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=["overhead", "compute", "both"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overhead-jobs", type=int, default=3000)
    parser.add_argument("--overhead-batch", type=int, default=64)
    parser.add_argument("--compute-jobs", type=int, default=240)
    parser.add_argument("--compute-batch", type=int, default=4)
    parser.add_argument("--plain-fraction", type=int, default=3, help="the plain worker drains jobs/this")
    parser.add_argument("--litserve-requests", type=int, default=160)
    parser.add_argument("--no-litserve", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="alternate ours/plain this many times; medians")
    parser.add_argument("--write", action="store_true", help="record the tables in BENCHMARKS.md")
    args = parser.parse_args()
    server = RedisServer(binary=find_redis_server(prefer_embedded=False)).start()
    try:
        summary, rows = [], []
        for name in ("overhead", "compute") if args.regime == "both" else (args.regime,):
            regime_rows, extra = regime(name, server.url, args)
            rows += regime_rows
            summary.append((name, extra))
    finally:
        server.stop()
    headers = ["regime", "runner", "ok/jobs", "images/s", "x plain RQ", "round trips/job", "commands/job"]
    body = table(headers, rows) + "\n\n" + summarize(summary)
    report(f"throughput-{args.device.split(':')[0]}", f"Throughput on {args.device}", body, args.write)


def summarize(summary: list[tuple[str, dict]]) -> str:
    lines = []
    for name, extra in summary:
        each = ", ".join(f"{r:.1f}" for r in extra["ratios"])
        ratio = extra["ours"] / extra["plain"]
        lines.append(f"- {name}: ours / plain RQ = **{ratio:.1f}x** (medians; each run: {each})")
        if "efficiency" in extra:
            lines.append(f"- compute: pipeline efficiency (end to end / in-process) = **{extra['efficiency']:.2f}**")
        if "litserve" in extra:
            lines.append(f"- compute: ours / LitServe's best = **{extra['ours'] / extra['litserve']:.2f}x**")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
