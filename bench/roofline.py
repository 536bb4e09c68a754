"""Roofline: each model alone on prepared tensors, images/s by batch size (1, 2, 4, ... N).

``python -m bench.roofline [--device cpu] [--max-batch 16] [--write]``: no Redis, no decoding;
the upper bound the worker's throughput is compared with.
"""

from __future__ import annotations

import argparse

import torch

from worker.model import bucket_sizes, load_model
from worker.perf import time_buckets

from .common import ensure_model, report, table
from .plots import curves_plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=256 if torch.cuda.is_available() else 16)
    parser.add_argument("--budget-s", type=float, default=1.0)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows, series = [], {}
    for kind in ("tiny", "lite0"):
        most = max(args.max_batch, 64) if kind == "tiny" else args.max_batch
        model = load_model(ensure_model(kind), args.device, most, args.precision)
        model.warm_up(rounds=1)
        timings = time_buckets(model, bucket_sizes(most), budget_s=args.budget_s)
        best = max(t.images_per_s for t in timings)
        rows += [
            [
                model.info.tag,
                t.batch,
                t.ms_per_batch,
                t.images_per_s,
                t.images_per_s / timings[0].images_per_s,
                "**best**" if t.images_per_s == best else "",
            ]
            for t in timings
        ]
        series[model.info.tag] = [(t.batch, t.images_per_s) for t in timings]
    body = table(["model", "batch", "ms/batch", "images/s", "x batch 1", ""], rows)
    dev = args.device.split(":")[0]
    png = curves_plot(series, f"roofline-{dev}.png", "batch size", "images/s (log)")
    if png:
        body += f"\n\n![roofline]({png})"
    note = f"{args.precision}; uint8 batch -> normalise on the device -> forward (the worker's `Classifier.logits`)."
    report(f"roofline-{dev}", f"Roofline on {args.device}", note + "\n\n" + body, args.write)


if __name__ == "__main__":
    main()
