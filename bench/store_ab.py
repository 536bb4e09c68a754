"""The store's benchmark rows, re-run for several commits in one run, alternating.

``python -m bench.store_ab --refs 3042faf,7ed19ec,. [--rounds 2] [--scripts redis_ceiling,shards,...]``

Each commit runs its own copy of each benchmark script (a git worktree under bench/out/ab/, as
``bench.ab`` makes): the code and the harness of that commit, as it was measured then. The commits
take turns within each round, so the box's noise falls on all of them alike. Every table is kept
under bench/out/store_ab/ and printed together; ``--write`` records them in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .ab import head_label, worktree
from .common import OUT, ROOT, report

SCRIPTS = ("redis_ceiling", "shards", "cache", "enqueue_cost")


def tree(ref: str) -> tuple[Path, str]:
    """The files of ``ref`` (``.``: this checkout as it is, labelled ``+changes`` when it has some) and its
    short hash."""
    return (ROOT, head_label()) if ref == "." else worktree(ref)


def run_script(root: Path, script: str, out: Path) -> float:
    """Run ``bench.<script>`` from ``root`` (its own code on its own path); keep stdout; return seconds."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{script}"], cwd=root, env=env, capture_output=True, text=True, timeout=1800
    )
    out.write_text(done.stdout + ("\n[stderr]\n" + done.stderr[-4000:] if done.returncode else ""))
    return time.monotonic() - started


def tables(text: str) -> str:
    """The markdown tables and notes a benchmark printed (from its first '## ' heading on)."""
    at = text.find("\n## ")
    return text[at:].strip() if at >= 0 else text.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", default="3042faf,7ed19ec,.", help="commits, the first is 'before'")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scripts", default=",".join(SCRIPTS))
    parser.add_argument("--write", action="store_true", help="record the tables in BENCHMARKS.md")
    args = parser.parse_args(argv)
    trees = [tree(ref) for ref in args.refs.split(",")]
    folder = OUT / "store_ab"
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for script in args.scripts.split(","):
        for round_ in range(1, args.rounds + 1):
            for root, sha in trees:
                out = folder / f"{script}-{sha}-{round_}.md"
                seconds = run_script(root, script, out)
                print(f"{script} {sha} round {round_}: {seconds:.0f} s", flush=True)
                parts.append(f"### {script}, {sha}, round {round_}\n\n{tables(out.read_text())}")
    body = "\n\n".join(parts)
    report("store-ab", f"Store rows, {args.refs} in turn", body, args.write)


if __name__ == "__main__":
    main()
