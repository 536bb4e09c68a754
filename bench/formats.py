"""EfficientNet-Lite0 as an AOTInductor ``.pt2`` package vs the TorchScript path the worker runs today (frozen,
optimize_for_inference), side by side in one run: images/s by batch size and the two formats' agreement on
the demo photos; recorded as the ``formats-<device>`` section of BENCHMARKS.md.

``python -m bench.formats [--device cpu] [--batches 1,8,32] [--rounds 3] [--budget-s 2] [--threads N] [--bf16]
[--write]``

Both run through the worker's own ``Classifier.logits`` (uint8 pixels in, normalisation on the device, logits
out), rounds alternate TorchScript and package, and the speed ratio is taken per round (paired), so load from
other processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from worker.decode.cpu import Limits, decode
from worker.model import Classifier, load_model
from worker.perf import random_batch, time_batches
from worker.precision import agreement as compare

from .common import OUT, ROOT, ensure_model, photos, report, table


def ensure_package(device: str, precision: str = "fp32") -> tuple[Path, float | None]:
    """The demo model as a ``.pt2`` package for ``device``'s kind (and ``precision``) under bench/out; seconds
    the export took (None when it was already there)."""
    kind = torch.device(device).type
    path = OUT / (f"lite0-{kind}.pt2" if precision == "fp32" else f"lite0-{kind}-{precision}.pt2")
    if path.exists():
        return path, None
    start = time.perf_counter()
    args = ["export", "--demo", "--out", str(path), "--device", kind, "--precision", precision]
    subprocess.run([sys.executable, "-m", "worker", *args], cwd=ROOT, check=True)
    return path, time.perf_counter() - start


def agreement(package: Classifier, script: Classifier) -> tuple[int, int, float]:
    """Photos with the same top-1, photos compared, and the largest top-5 probability difference (by label):
    ``worker.precision.agreement`` (what ``--precision auto`` asks) on the demo photos at full size."""
    pre = script.info.preprocess
    pixels = [torch.frombuffer(bytearray(decode(data, pre, Limits())), dtype=torch.uint8) for data in photos()]
    found = compare(package, script, torch.stack(pixels).view(len(pixels), *pre.size, 3))
    return found.same_top1, found.photos, found.max_top5_diff


def speeds(models: dict[str, Classifier], size: int, rounds: int, budget_s: float) -> dict[str, list[float]]:
    """Images/s of each model's ``logits`` at batch ``size``, ``rounds`` times, alternating the models."""
    first = next(iter(models.values()))
    batch = random_batch(first, size)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            timing = time_batches(lambda m=model: m.logits(batch), size, model.device, budget_s=budget_s)
            rates[name].append(timing.images_per_s)
    return rates


def speed_rows(loaded: dict[str, Classifier], sizes: list[int], rounds: int, budget_s: float) -> list[list[object]]:
    """One table row per batch size: TorchScript fp32's median images/s, then for every other model its median
    and the median of its per-round ratios to TorchScript (paired rounds); last, the package's ratio per round
    and the two bests' ratio (the least disturbed round on a shared machine)."""
    rows: list[list[object]] = []
    for size in sizes:
        rates = speeds(loaded, size, rounds, budget_s)
        base = rates["TorchScript"]
        row: list[object] = [size, statistics.median(base)]
        for name, got in rates.items():
            if name != "TorchScript":
                ratios = [g / t for g, t in zip(got, base, strict=True)]
                row += [statistics.median(got), f"{statistics.median(ratios):.2f}x"]
        package = [p / t for p, t in zip(rates["package"], base, strict=True)]
        row += [f"{max(rates['package']) / max(base):.2f}x", " / ".join(f"{r:.2f}" for r in package)]
        rows.append(row)
        print(f"batch {size}: " + ", ".join(f"{name} {got}" for name, got in rates.items()), flush=True)
    return rows


def build(device: str, precisions: list[str], sizes: list[int]) -> tuple[dict, dict, dict, list[str]]:
    """Load TorchScript (fp32, then each other precision, cast at load) and the packages (exported for each
    precision): the models, their files, seconds to load, and a note on each export."""
    paths: dict[str, Path] = {"TorchScript": ensure_model("lite0")}
    wanted = {"TorchScript": "fp32"}
    built: list[str] = []
    for precision in precisions:
        suffix = "" if precision == "fp32" else f" {precision}"
        paths[f"package{suffix}"], compile_s = ensure_package(device, precision)
        wanted[f"package{suffix}"] = precision
        built.append(f"{precision} package " + (f"exported in {compile_s:.0f} s" if compile_s else "already built"))
        if precision != "fp32":
            paths[f"TorchScript{suffix}"], wanted[f"TorchScript{suffix}"] = paths["TorchScript"], precision
    loaded: dict[str, Classifier] = {}
    load_s: dict[str, float] = {}
    for name, path in paths.items():
        start = time.perf_counter()
        loaded[name] = load_model(path, device, max(sizes), precision=wanted[name], optimize="auto")
        load_s[name] = time.perf_counter() - start
    return loaded, paths, load_s, built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per batch size")
    parser.add_argument("--budget-s", type=float, default=2.0, help="timing budget per model per round")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    parser.add_argument("--bf16", action="store_true", help="also bf16: TorchScript cast at load, a bf16 package")
    parser.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batches.split(",")]
    loaded, paths, load_s, built = build(args.device, ["fp32", "bf16"] if args.bf16 else ["fp32"], sizes)
    agree = {name: agreement(model, loaded["TorchScript"]) for name, model in loaded.items() if name != "TorchScript"}
    rows = speed_rows(loaded, sizes, args.rounds, args.budget_s)
    headers = ["batch", "TorchScript img/s"]
    for name in loaded:
        if name != "TorchScript":
            headers += [f"{name} img/s", f"{name} / TorchScript"]
    headers += ["package best / TorchScript best", "package / TorchScript per round"]
    agreements = "; ".join(
        f"{name}: top-1 as TorchScript fp32 on {same}/{compared} demo photos, largest top-5 probability "
        f"difference {diff:.1e}" + ("" if same == compared else " (**not kept**: top-1 differs)")
        for name, (same, compared, diff) in agree.items()
    )
    mb = {name: path.stat().st_size / 1e6 for name, path in paths.items()}
    loads = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in load_s.items())
    body = (
        f"`python -m bench.formats --device {args.device} --batches {args.batches} --rounds {args.rounds}"
        f"{f' --threads {args.threads}' if args.threads else ''}{' --bf16' if args.bf16 else ''}`: "
        f"EfficientNet-Lite0, {args.rounds} alternating rounds ({args.budget_s:g} s each) through "
        f"`Classifier.logits`; TorchScript as the worker runs it (frozen, optimize_for_inference); ratios are "
        f"the medians of per-round ratios to TorchScript fp32; {torch.get_num_threads()} intra-op threads.\n\n"
        + table(headers, rows)
        + f"\n\n{agreements}.\n\nLoad (TorchScript with optimize_for_inference): {loads}; {'; '.join(built)}; "
        f"files: TorchScript {mb['TorchScript']:.1f} MB, package {mb['package']:.1f} MB."
    )
    section = f"formats-{torch.device(args.device).type}" + (f"-{args.threads}t" if args.threads else "")
    report(section, f"Model formats on {args.device}", body, args.write)


if __name__ == "__main__":
    main()
