"""The five-practices report (``python -m worker bench``) on the demo model, recorded in BENCHMARKS.md.

``python -m bench.practices [--device cpu] [--write]``
"""

from __future__ import annotations

import argparse

import torch

from worker.practices import render, report

from .common import ensure_model
from .common import report as record
from .plots import PLOTS, practices_plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-batch", type=int, default=256 if torch.cuda.is_available() else 16)
    parser.add_argument("--budget-s", type=float, default=1.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    result = report(
        str(ensure_model("lite0")), args.device, args.max_batch, "worker.export:efficientnet_lite0", args.budget_s
    )
    dev = args.device.split(":")[0]
    body = "`python -m worker bench --model M --eager worker.export:efficientnet_lite0`\n\n" + render(result)
    PLOTS.mkdir(parents=True, exist_ok=True)
    if practices_plot(result, PLOTS / f"practices-{dev}.png"):
        body += f"\n\n![five practices](bench/plots/practices-{dev}.png)"
    record(f"practices-{dev}", f"Five practices on {args.device}", body, args.write)


if __name__ == "__main__":
    main()
