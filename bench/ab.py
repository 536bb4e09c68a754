"""Before and after, in one run: the worker of another commit against this checkout's, on the same jobs.

``python -m bench.ab --before REF [--regime overhead|decode] [--repeats 3] [--jobs 3000] [--write]``

The commit ``REF`` is checked out in a git worktree under bench/out/ab/ and its worker runs from there
(``PYTHONPATH`` = that tree); this checkout's worker runs from here; both drain the same pre-filled
queue on the same Redis, alternating, ``--repeats`` times each, with a plain ``rq worker`` (this
checkout's task) as the common yardstick. The jobs are enqueued by this checkout's producer: the
wire format is the contract both commits share. Judges a change on the per-job path (take, decode,
batch, finish) without the machine's noise between separate runs.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from bench.devserver import RedisServer, find_redis_server

from .common import OUT, ROOT, ensure_model, photos, report, small_jpegs, table, unique_payloads
from .drain import Drain, drain

HEADERS = [
    "runner",
    "commit",
    "jobs/s (median)",
    "each run",
    "x plain rq",
    "x before",
    "commands/job",
    "round trips/job",
    "Redis CPU us/job (worker)",
]


def worktree(ref: str) -> tuple[Path, str]:
    """A worktree of ``ref`` under bench/out/ab/ (made once per commit) and the commit's short hash."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    path = OUT / "ab" / sha
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True, capture_output=True
        )
    return path, sha


def head_label() -> str:
    """This checkout's short hash, with ``+changes`` when tracked files differ from it."""
    here = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    return here + ("+changes" if dirty else "")


def median(runs: list[Drain]) -> Drain:
    return sorted(runs, key=lambda d: d.images_per_s)[len(runs) // 2]


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit to compare with (a ref or hash)")
    parser.add_argument(
        "--before-tree",
        type=Path,
        help="that commit's files, already checked out (a machine "
        "without the git history, e.g. a lent GPU); --before then only labels it",
    )
    parser.add_argument("--after-label", help="how to name this checkout (default: git's HEAD)")
    parser.add_argument("--regime", choices=["overhead", "decode"], default="overhead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--plain-fraction", type=int, default=6, help="plain rq drains jobs/N (it is slow)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    before, sha = (args.before_tree.resolve(), args.before) if args.before_tree else worktree(args.before)
    here = args.after_label or head_label()
    if args.regime == "overhead":
        model, sources = str(ensure_model("tiny")), small_jpegs()
    else:
        model, sources = str(ensure_model("pool224")), photos()
    payloads = unique_payloads(sources, args.jobs)  # a batch runs a repeated photo once: distinct bytes
    runs: dict[str, list[Drain]] = {"before": [], "after": [], "rq": []}
    with RedisServer(find_redis_server()) as server:
        for _ in range(args.repeats):
            runs["before"].append(
                drain("ours", server.url, model, payloads, batch=args.batch, device=args.device, root=before)
            )
            runs["after"].append(drain("ours", server.url, model, payloads, batch=args.batch, device=args.device))
            runs["rq"].append(
                drain("rq", server.url, model, payloads[: len(payloads) // args.plain_fraction], device=args.device)
            )
    rq, old = median(runs["rq"]), median(runs["before"])
    rows = []
    for key, runner, commit in (("before", "ours", sha), ("after", "ours", here), ("rq", "plain rq", here)):
        m = median(runs[key])
        each = ", ".join(f"{d.images_per_s:.0f}" for d in runs[key])
        rows.append(
            [
                runner,
                commit,
                m.images_per_s,
                each,
                m.images_per_s / rq.images_per_s,
                m.images_per_s / old.images_per_s if key != "rq" else "",
                m.commands_per_job,
                m.round_trips_per_job,
                m.redis_worker_us_per_job,
            ]
        )
    after = median(runs["after"])
    pairs = ", ".join(
        f"{a.images_per_s / b.images_per_s:.2f}" for a, b in zip(runs["after"], runs["before"], strict=False)
    )
    body = table(HEADERS, rows) + (
        f"\n\n- {args.regime} regime, {args.jobs} jobs, batch {args.batch}, {args.repeats} alternating rounds: "
        f"after / before = **{after.images_per_s / old.images_per_s:.2f}x** (each round: {pairs})"
    )
    report(f"ab-{args.regime}", f"Before ({sha}) and after ({here}), {args.regime} regime", body, args.write)


if __name__ == "__main__":
    main()
