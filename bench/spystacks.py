"""Read py-spy's raw (collapsed) stacks of a worker drain: inclusive GIL-held time per function, per job.

``python -m bench.spystacks RAW --jobs N [--rate 500] [--top 40] [--base OTHER_RAW]``

``bench.jobcost --profile`` writes one RAW per commit (``py-spy record --gil --rate 500``: a sample is taken
only of the thread holding the GIL). A function's µs per job = the samples whose stack contains it (once per
sample) / rate / jobs. Only threads other than the main one count (the stages; start-up is the main
thread's). With ``--base`` the table shows both files and the difference, largest growth first.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:)]+)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    """``function (file)`` without the line number, the file shortened to its last two parts."""
    found = FRAME.match(frame.strip())
    if not found:
        return frame.strip()
    parts = found["file"].replace("\\", "/").split("/")
    return f"{found['func']} ({'/'.join(parts[-2:])})"


def inclusive(raw: Path) -> tuple[Counter[str], int]:
    """Samples per function (each counted once per stack) and the total, stage threads only."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit() or "Thread._bootstrap (" not in stack:
            continue
        samples = int(n)
        total += samples
        for key in {frame_key(f) for f in stack.split(";")}:
            counts[key] += samples
    return counts, total


def per_job(counts: Counter[str], rate: float, jobs: int) -> dict[str, float]:
    return {k: v / rate / jobs * 1e6 for k, v in counts.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--base", type=Path, help="another raw file (an older commit) to compare with")
    parser.add_argument("--match", default="", help="only functions whose key contains this (a regex)")
    args = parser.parse_args(argv)
    counts, total = inclusive(args.raw)
    here = per_job(counts, args.rate, args.jobs)
    pick = re.compile(args.match) if args.match else None
    keep = [k for k in here if pick is None or pick.search(k)]
    print(f"{args.raw.name}: {total} GIL samples in stage threads = {total / args.rate / args.jobs * 1e6:.0f} µs/job")
    if args.base is None:
        for key in sorted(keep, key=here.get, reverse=True)[: args.top]:
            print(f"{here[key]:8.1f}  {key}")
        return
    base_counts, base_total = inclusive(args.base)
    base = per_job(base_counts, args.rate, args.jobs)
    print(f"{args.base.name}: {base_total / args.rate / args.jobs * 1e6:.0f} µs/job")
    keys = set(keep) | {k for k in base if pick is None or pick.search(k)}
    for key in sorted(keys, key=lambda k: here.get(k, 0) - base.get(k, 0), reverse=True)[: args.top]:
        old, new = base.get(key, 0.0), here.get(key, 0.0)
        print(f"{old:8.1f} -> {new:8.1f}  ({new - old:+7.1f})  {key}")


if __name__ == "__main__":
    main()
