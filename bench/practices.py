"""The five-practices report (``python -m worker bench``) on the demo model, recorded in BENCHMARKS.md.

``python -m bench.practices [--device cpu] [--pt2] [--write]``

``--pt2`` adds the AOTInductor package vs TorchScript rows per batch size (the demo model exported for the
device under bench/out, built once: tens of seconds to minutes on a CPU).
"""

from __future__ import annotations

import argparse

import torch

from worker.practices import render, report

from .common import ensure_model
from .common import report as record
from .formats import ensure_package
from .plots import PLOTS, practices_plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-batch", type=int, default=256 if torch.cuda.is_available() else 16)
    parser.add_argument("--budget-s", type=float, default=1.0)
    parser.add_argument("--pt2", action="store_true", help="also the .pt2 package vs TorchScript, per batch size")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    model, eager = str(ensure_model("lite0")), "worker.export:efficientnet_lite0"
    package = str(ensure_package(args.device)[0]) if args.pt2 else None
    result = report(model, args.device, args.max_batch, eager, args.budget_s, compare=package)
    dev = args.device.split(":")[0]
    command = f"`python -m worker bench --model M --eager {eager}{' --compare M.pt2' if package else ''}`"
    body = f"{command}\n\n" + render(result)
    PLOTS.mkdir(parents=True, exist_ok=True)
    if practices_plot(result, PLOTS / f"practices-{dev}.png"):
        body += f"\n\n![five practices](bench/plots/practices-{dev}.png)"
    record(f"practices-{dev}", f"Five practices on {args.device}", body, args.write)


if __name__ == "__main__":
    main()
