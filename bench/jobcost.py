"""What one job costs the worker, commit by commit: CPU per job by thread, Redis commands and CPU per job.

``python -m bench.jobcost --refs 69e73ac,f8f0ed4,3042faf,. [--jobs 3000] [--rounds 3] [--same-payloads] [--write]``

The overhead regime of ``bench.ab`` (48-px JPEGs, the tiny model, ``--batch-size 64``, jobs queued, a burst
worker): each commit's worker runs from its git worktree (``.`` = this checkout, uncommitted changes
included), in rotating order, ``--rounds`` times, on one Redis, each on a freshly filled queue. The worker
runs under ``bench/threadcpu.py``: every stage thread's CPU time (take, decode, infer, finish, heartbeat)
over the whole drain, divided by the jobs; the main thread's start-up (torch, model load) is left out.
By default every job's bytes are unique (a JPEG comment), so no commit's batch de-duplication runs one
photo for several jobs; ``--same-payloads`` repeats bench.ab's 8 photos as the issue's table did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from producer import Producer

from .ab import head_label, worktree
from .common import OUT, ROOT, commands_total, ensure_model, report, small_jpegs, table
from .devserver import RedisServer, find_redis_server
from .drain import ended_times, rate_from_end_times, redis_cpu_s, worker_args

SHIM = ROOT / "bench" / "threadcpu.py"
LAUNCH = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
STAGES = ("take", "decode", "fetch", "gpu-decode", "infer", "finish", "heartbeat")


def payloads(count: int, unique: bool) -> list[bytes]:
    """bench.ab's 48-px JPEGs, cycled; with ``unique`` each gets its own COM segment (distinct SHA-256)."""
    sources = small_jpegs()
    out = []
    for i in range(count):
        data = sources[i % len(sources)]
        if unique:
            note = f"jobcost {i}".encode()
            data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + data[2:]
        out.append(data)
    return out


def tree_of(ref: str) -> tuple[Path, str]:
    """The source tree and label of ``ref`` (``.``: this checkout as it is)."""
    return (ROOT, head_label()) if ref == "." else worktree(ref)


def launch(tree: Path, out: Path, url: str, model: str, batch: int, spy: Path | None = None) -> list[str]:
    """The worker's command line under the thread-CPU shim (and py-spy when ``spy`` names its output)."""
    cmd = [sys.executable, "-c", LAUNCH, str(SHIM), str(out), *worker_args("ours", url, model, batch, "cpu")]
    if spy is None:
        return cmd
    pyspy = str(Path(sys.executable).with_name("py-spy"))
    return [pyspy, "record", "--format", "raw", "--gil", "--nonblocking", "--rate", "500", "-o", str(spy), "--", *cmd]


def drain_once(tree: Path, url: str, model: str, jobs: list[bytes], batch: int, spy: Path | None = None) -> dict:
    """Fill the queue, run the worker from ``tree`` until it is empty; what it cost."""
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    ids = Producer(url).enqueue_many(jobs)
    out = OUT / "jobcost" / "threads.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cpu, commands, by_command = redis_cpu_s(conn), commands_total(conn), command_counts(conn)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)}
    env.update(WORKER_MODEL=model, WORKER_DEVICE="cpu")
    quiet = subprocess.DEVNULL
    subprocess.run(launch(tree, out, url, model, batch, spy), cwd=tree, env=env, check=True, timeout=900, stdout=quiet)
    n = len(ids)
    redis_us, per_job = (redis_cpu_s(conn) - cpu) * 1e6 / n, (commands_total(conn) - commands - 2) / n
    after = command_counts(conn)
    mix = {k: (v - by_command.get(k, 0)) / n for k, v in after.items() if v != by_command.get(k, 0)}
    ended, ok = ended_times(conn, ids)
    shim = json.loads(out.read_text())
    threads = {k: v * 1e6 / n for k, v in shim["threads"].items()}
    stages = sum(v for k, v in threads.items() if not k.startswith("main"))
    return {
        "jobs_per_s": rate_from_end_times(ended),
        "ok": ok,
        "jobs": n,
        "threads_us": threads,
        "stage_cpu_us": stages,
        "commands": per_job,
        "round_trips": shim["round_trips"] / n,
        "redis_us": redis_us,
        "command_mix": mix,
    }


def command_counts(conn: redis.Redis) -> dict[str, int]:
    """Calls so far by command (``INFO commandstats``; commands run inside scripts included)."""
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in conn.info("commandstats").items()}


def mix_rows(results: dict[str, list[dict]], labels: dict[str, str]) -> tuple[list[str], list[list[object]]]:
    """Redis commands per job by command (medians), one column per commit; commands below 0.01/job left out."""
    results = {ref: runs for ref, runs in results.items() if runs}
    names = sorted({c for runs in results.values() for r in runs for c in r["command_mix"]})
    rows = []
    for name in names:
        cells = [statistics.median(r["command_mix"].get(name, 0.0) for r in runs) for runs in results.values()]
        if max(cells) >= 0.01 and name != "info":
            rows.append([name, *cells])
    return ["command", *(labels[ref] for ref in results)], rows


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def thread_med(runs: list[dict], name: str) -> float:
    return statistics.median(r["threads_us"].get(name, 0.0) for r in runs)


def render(results: dict[str, list[dict]], labels: dict[str, str], args: argparse.Namespace) -> str:
    results = {ref: runs for ref, runs in results.items() if runs}  # a ref whose every run failed is left out
    names = [s for s in STAGES if any(thread_med(r, s) >= 0.5 for r in results.values())]
    headers = ["commit", "jobs/s (median)", "each round", "stage CPU µs/job", "each round", *names]
    headers += ["Redis commands/job", "round trips/job", "Redis CPU µs/job"]
    rows = []
    for ref, runs in results.items():
        each_rate = ", ".join(f"{r['jobs_per_s']:.0f}" for r in runs)
        each_cpu = ", ".join(f"{r['stage_cpu_us']:.0f}" for r in runs)
        cells: list[Any] = [labels[ref], med(runs, "jobs_per_s"), each_rate, med(runs, "stage_cpu_us"), each_cpu]
        cells += [thread_med(runs, s) for s in names]
        cells += [med(runs, "commands"), med(runs, "round_trips"), med(runs, "redis_us")]
        rows.append(cells)
    same = "8 repeated 48-px JPEGs (as bench.ab)" if args.same_payloads else "unique 48-px JPEGs"
    note = (
        f"Overhead regime: {args.jobs} jobs of {same}, tiny model, --batch-size {args.batch}, jobs queued, one "
        f"burst worker per drain, {args.rounds} rounds in rotating order, medians. Stage CPU: the worker's "
        "threads other than the main one (start-up excluded), by thread, per job (bench/threadcpu.py)."
    )
    return table(headers, rows) + "\n\n" + table(*mix_rows(results, labels)) + "\n\n" + note


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", required=True, help="commits, comma-separated, oldest first; '.' = this checkout")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--same-payloads", action="store_true", help="bench.ab's 8 photos repeated")
    parser.add_argument("--profile", action="store_true", help="then one drain per commit under py-spy (--gil)")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args(argv)
    refs = [r.strip() for r in args.refs.split(",") if r.strip()]
    trees = {ref: tree_of(ref) for ref in refs}
    labels = {ref: label for ref, (_, label) in trees.items()}
    model, jobs = str(ensure_model("tiny")), payloads(args.jobs, not args.same_payloads)
    results: dict[str, list[dict]] = {ref: [] for ref in refs}
    with RedisServer(find_redis_server()) as server:
        for round_ in range(args.rounds):
            for ref in refs[round_ % len(refs) :] + refs[: round_ % len(refs)]:
                try:
                    run = drain_once(trees[ref][0], server.url, model, jobs, args.batch)
                except subprocess.CalledProcessError as exc:  # a tree mid-edit: skip this run, keep the others
                    print(f"  {labels[ref]}: worker failed ({exc.returncode}); run left out", flush=True)
                    continue
                results[ref].append(run)
                print(f"  {labels[ref]}: {run['jobs_per_s']:.0f} jobs/s, {run['stage_cpu_us']:.0f} µs/job", flush=True)
        for ref in refs if args.profile else ():
            spy = OUT / "jobcost" / f"spy-{labels[ref]}.txt"
            drain_once(trees[ref][0], server.url, model, jobs, args.batch, spy)
            print(f"  py-spy: {spy}", flush=True)
    if args.rounds < 1:
        return
    title = "Worker cost per job, commit by commit (overhead regime)"
    report("jobcost", title, render(results, labels, args), args.write)


if __name__ == "__main__":
    main()
