"""Throughput side by side, in one run: our worker vs plain RQ, vs LitServe, and vs the machine's decode capacity.

``python -m bench.throughput [--regime overhead|compute|decode|all] [--device cpu] [--pt2] [--write]``

- overhead: a tiny CNN on small JPEGs (what a GPU looks like: compute nearly free); ours vs a
  plain ``rq worker`` (SimpleWorker) on the same jobs, with Redis round trips and commands per job;
- compute: EfficientNet-Lite0 on the real photos; ours vs LitServe as a user would run it (its own
  ``torch.jit.load`` and Pillow preprocessing, bench/litserve_app.py) at max_batch 1/4/8, and the
  same decode + model in-process (no Redis) for pipeline efficiency; ``--pt2`` adds our worker on the
  model as an AOTInductor package (LitServe keeps the TorchScript file, as its user would load it);
- decode: a nearly free 224-px model on the real photos, jobs already queued; ours vs the
  machine's all-core Pillow decode capacity measured in the same run (bench/decode_capacity.py).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from bench.devserver import RedisServer, find_redis_server
from worker.decode.cpu import Limits
from worker.model import load_model
from worker.tasks import decode_image

from .common import ensure_model, exit_on_sigterm, photos, report, small_jpegs, table, unique_payloads
from .drain import Drain, drain
from .formats import ensure_package

HEADERS = ["regime", "runner", "ok/jobs", "images/s", "ratio", "round trips/job", "commands/job"]


def in_process(model_path: str, payloads: list[bytes], batch: int, device: str, threads: int | None = None) -> float:
    """Images/s decoding (a thread per core, as our worker's pool) then classifying the same images at ``batch``,
    no Redis, no overlap."""
    threads = threads or os.cpu_count() or 2
    model = load_model(model_path, device, batch, optimize="auto")
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


def _median(runs: list[Drain]) -> Drain:
    """The median run (of an even count, the lower of the middle two: never the faster one by construction)."""
    return sorted(runs, key=lambda d: d.images_per_s)[(len(runs) - 1) // 2]


def _row(regime: str, runner: str, run: Drain, ratio: float) -> list:
    return [
        regime,
        runner,
        f"{run.ok}/{run.jobs}",
        run.images_per_s,
        ratio,
        run.round_trips_per_job,
        run.commands_per_job,
    ]


def overhead(url: str, args: argparse.Namespace) -> tuple[list[list], list[str]]:
    """Ours vs plain RQ on a tiny model, alternated ``--repeats`` times; medians and every ratio."""
    model, sources = str(ensure_model("tiny")), small_jpegs()
    payloads = unique_payloads(sources, args.overhead_jobs)
    ours, plain = [], []
    for _ in range(args.repeats):
        ours.append(drain("ours", url, model, payloads, batch=args.overhead_batch, device=args.device))
        plain.append(drain("rq", url, model, payloads[: len(payloads) // args.plain_fraction], device=args.device))
    ratios = [o.images_per_s / p.images_per_s for o, p in zip(ours, plain, strict=False)]
    o, p = _median(ours), _median(plain)
    rows = [
        _row("overhead", f"ours (batch {args.overhead_batch})", o, o.images_per_s / p.images_per_s),
        _row("overhead", "plain rq SimpleWorker", p, 1.0),
    ]
    each = ", ".join(f"{r:.1f}" for r in ratios)
    return rows, [
        f"- overhead: ours / plain RQ = **{o.images_per_s / p.images_per_s:.1f}x** (medians; each run: "
        f"{each}), {o.round_trips_per_job:.3f} round trips/job (target >= 15x, <= 0.25)"
    ]


def compute(url: str, args: argparse.Namespace) -> tuple[list[list], list[str]]:
    """Ours vs LitServe (its own code) on EfficientNet-Lite0, alternated; plus the in-process reference."""
    model, sources = str(ensure_model("lite0")), photos()
    payloads = unique_payloads(sources, args.compute_jobs)
    ours, packaged, lit, inprocs = _compute_rounds(url, args, model, payloads)
    inproc = sorted(inprocs)[(len(inprocs) - 1) // 2]  # measured in every round, as the others
    o = _median(ours)
    rows = [_row("compute", f"ours (batch {args.compute_batch})", o, o.images_per_s / inproc)]
    rows.append(
        [
            "compute",
            f"in-process decode + model (batch {args.compute_batch}, no Redis)",
            len(payloads),
            inproc,
            1.0,
            0.0,
            0.0,
        ]
    )
    notes = [f"- compute: pipeline efficiency (ours / in-process) = **{o.images_per_s / inproc:.2f}**"]
    if packaged:
        q = _median(packaged)
        rows.insert(1, _row("compute", f"ours, .pt2 package (batch {args.compute_batch})", q, q.images_per_s / inproc))
    if not args.no_litserve:
        more_rows, more_notes = _against_litserve(lit, ours, packaged, inproc, args.litserve_requests)
        rows, notes = rows + more_rows, notes + more_notes
    return rows, notes


def _compute_rounds(
    url: str, args: argparse.Namespace, model: str, payloads: list[bytes]
) -> tuple[list, list, dict, list[float]]:
    """Each round: our worker (and with ``--pt2`` the same worker on the package), LitServe in each configuration
    (``litserve_configs``) and the in-process reference; their drains and rates."""
    from .litserve_client import measure

    ours, packaged, lit, inprocs = [], [], {config: [] for config in litserve_configs(args.device)}, []
    package = str(ensure_package(args.device)[0]) if args.pt2 else None
    for _ in range(args.repeats):
        ours.append(
            drain("ours", url, model, payloads, batch=args.compute_batch, device=args.device, extra=decode_flags(args))
        )
        if package:  # the same worker on the same jobs, with the model as an AOTInductor package
            flags = decode_flags(args)
            packaged.append(
                drain("ours", url, package, payloads, batch=args.compute_batch, device=args.device, extra=flags)
            )
        if not args.no_litserve:
            for (max_batch, workers), rates in lit.items():
                clients = litserve_clients(max_batch, workers)
                rates.append(
                    measure(model, payloads[: args.litserve_requests], max_batch, args.device, clients, workers)
                )
        inprocs.append(in_process(model, payloads, args.compute_batch, args.device))
    return ours, packaged, lit, inprocs


def litserve_configs(device: str) -> list[tuple[int, int]]:
    """LitServe's (max_batch, workers_per_device) as a competent user would try them: on a CPU of 2 cores one
    process and small batches; on a GPU large batches and several processes (its decode runs in Python per
    request, one process at a time)."""
    return [(8, 1), (64, 1), (64, 4)] if device.startswith("cuda") else [(1, 1), (4, 1), (8, 1)]


def litserve_clients(max_batch: int, workers: int) -> int:
    """Requests in flight: enough to fill every worker's batches twice over."""
    return max(16, 2 * max_batch * workers)


def _against_litserve(
    lit: dict[tuple[int, int], list[float]], ours: list, packaged: list, inproc: float, requests: int
) -> tuple[list[list], list[str]]:
    """LitServe's rows (median per configuration) and the ratios of ours, and of the package, to its best
    configuration (the best median), each round against that configuration's rate in the same round."""
    rows, notes = [], []
    medians = {c: sorted(r)[(len(r) - 1) // 2] for c, r in lit.items()}
    top = max(medians, key=lambda c: medians[c])
    best = medians[top]
    for (max_batch, workers), rate in medians.items():
        clients = litserve_clients(max_batch, workers)
        label = f"LitServe max_batch {max_batch}, {workers} worker(s) (its own load + Pillow; HTTP, {clients} clients)"
        rows.append(["compute", label, requests, rate, rate / inproc, "n/a", "n/a"])
    each = ", ".join(f"{r.images_per_s / lit[top][i]:.2f}" for i, r in enumerate(ours))
    notes.append(
        f"- compute: ours / LitServe's best (max_batch {top[0]}, {top[1]} worker(s)) = "
        f"**{_median(ours).images_per_s / best:.2f}x** (each round: {each}; target >= 1.1x, floor 1.0x)"
    )
    if packaged:
        each = ", ".join(f"{r.images_per_s / lit[top][i]:.2f}" for i, r in enumerate(packaged))
        notes.append(
            f"- compute: ours with the .pt2 package / LitServe's best (TorchScript, as its user loads it) = "
            f"**{_median(packaged).images_per_s / best:.2f}x** (each round: {each}; issue 23's target 1.3x)"
        )
    return rows, notes


def decode_bound(url: str, args: argparse.Namespace) -> tuple[list[list], list[str]]:
    """Ours on a nearly free 224-px model vs the all-core Pillow capacity, measured in turn."""
    from .decode_capacity import capacity

    model, sources = str(ensure_model("pool224")), photos()
    payloads = unique_payloads(sources, args.decode_jobs)
    ours, caps = [], []
    for _ in range(args.repeats):
        ours.append(
            drain(
                "ours",
                url,
                model,
                payloads,
                batch=args.decode_batch,
                device=args.device,
                extra=[*args.worker_flags, *decode_flags(args)],
            )
        )
        caps.append(capacity(sources))
    o, cap = _median(ours), sorted(caps)[len(caps) // 2]
    label = f"ours (batch {args.decode_batch}, jobs queued{', --decode ' + args.decode if args.decode else ''})"
    rows = [
        _row("decode", label, o, o.images_per_s / cap),
        [
            "decode",
            "all-core Pillow decode + resize (process pool, no Redis, no model)",
            len(sources),
            cap,
            1.0,
            0.0,
            0.0,
        ],
    ]
    each = ", ".join(f"{r.images_per_s / c:.2f}" for r, c in zip(ours, caps, strict=False))
    return rows, [
        f"- decode-bound efficiency (ours / all-core decode capacity) = **{o.images_per_s / cap:.2f}** "
        f"(each round: {each}; target >= 0.8, floor 0.7)"
    ]


def decode_flags(args: argparse.Namespace) -> list[str]:
    """``--decode X`` for our worker when ``--decode`` was given (else the worker's default, auto)."""
    return ["--decode", args.decode] if args.decode else []


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", choices=["overhead", "compute", "decode", "all"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overhead-jobs", type=int, default=3000)
    parser.add_argument("--overhead-batch", type=int, default=64)
    parser.add_argument("--compute-jobs", type=int, default=240)
    parser.add_argument("--compute-batch", type=int, default=4)
    parser.add_argument("--decode-jobs", type=int, default=1500)
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--worker-flags", nargs="*", default=[], help="extra flags for our worker (decode regime)")
    parser.add_argument(
        "--decode",
        choices=["cpu", "gpu", "auto"],
        help="our worker's --decode (compute and decode regimes; default: the worker's, auto)",
    )
    parser.add_argument("--plain-fraction", type=int, default=3, help="the plain worker drains jobs/this")
    parser.add_argument("--litserve-requests", type=int, default=160)
    parser.add_argument("--no-litserve", action="store_true")
    parser.add_argument("--pt2", action="store_true", help="compute: also our worker on the .pt2 package")
    parser.add_argument("--repeats", type=int, default=3, help="alternate the runners this many times; medians")
    parser.add_argument("--write", action="store_true", help="record the tables in BENCHMARKS.md")
    args = parser.parse_args()
    regimes = {"overhead": overhead, "compute": compute, "decode": decode_bound}
    chosen = list(regimes) if args.regime == "all" else [args.regime]
    server = RedisServer(binary=find_redis_server(prefer_embedded=False)).start()
    rows, notes = [], []
    try:
        for name in chosen:
            regime_rows, regime_notes = regimes[name](server.url, args)
            rows += regime_rows
            notes += regime_notes
    finally:
        server.stop()
    body = table(HEADERS, rows) + "\n\n" + "\n".join(notes)
    suffix = ("" if args.regime == "all" else f"-{args.regime}") + (f"-{args.decode}" if args.decode else "")
    suffix += "-pt2" if args.pt2 else ""
    report(f"throughput-{args.device.split(':')[0]}{suffix}", f"Throughput on {args.device}", body, args.write)


if __name__ == "__main__":
    main()
