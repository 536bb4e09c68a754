"""``python -m worker bench``: the five-practices report for any model file.

Each practice is measured with and without, on the same model, device and batch, in one run:
inference mode, cuDNN autotuning (GPU), TorchScript (vs eager when a factory is given, else vs
freeze / optimize_for_inference), GPU vs CPU (when there is a GPU), batching (batch N vs 1); with
``--compare`` (the same model in the other format), the AOTInductor package vs TorchScript (frozen,
optimize_for_inference) at every batch size.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from .model import Classifier, bucket_sizes, load_model
from .perf import Timing, choose_batch_size, time_batches, time_buckets
from .pt2 import PRECISIONS, PackagedModel


def _inputs(model: Classifier, size: int, device: torch.device) -> torch.Tensor:
    height, width = model.info.preprocess.size
    return torch.randn(size, 3, height, width, device=device, dtype=model.dtype)


def _runner(module: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    contexts = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": contextlib.nullcontext}

    def call() -> object:
        with contexts[mode]():
            return module(x)

    return call


@contextlib.contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _time(module: torch.nn.Module, x: torch.Tensor, mode: str = "inference_mode", budget_s: float = 1.0) -> Timing:
    return time_batches(_runner(module, x, mode), x.shape[0], x.device, budget_s=budget_s)


def _row(practice: str, with_: str, without: str, on: Timing | None, off: Timing | None) -> dict:
    gain = on.images_per_s / off.images_per_s if on and off else None
    return {
        "practice": practice,
        "with": with_,
        "without": without,
        "with_images_per_s": on.images_per_s if on else None,
        "without_images_per_s": off.images_per_s if off else None,
        "gain": gain,
    }


def _script_rows(model: Classifier, x: torch.Tensor, base: Timing, eager: str | None, budget_s: float) -> list[dict]:
    rows = []
    if eager:
        module_name, _, fn = eager.partition(":")
        eager_module = getattr(importlib.import_module(module_name), fn)().to(model.device).to(model.dtype).eval()
        compiled = "AOTInductor package" if isinstance(model.module, PackagedModel) else "TorchScript"
        rows.append(_row(compiled, compiled, "eager", base, _time(eager_module, x, budget_s=budget_s)))
    frozen = torch.jit.freeze(model.module) if isinstance(model.module, torch.jit.ScriptModule) else None
    if frozen is None:
        return rows
    rows += [_row("TorchScript freeze", "frozen", "scripted", _time(frozen, x, budget_s=budget_s), base)]
    try:
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(model.module))
        timing = _time(optimized, x, budget_s=budget_s)
        rows.append(_row("optimize_for_inference", "optimized", "scripted", timing, base))
    except RuntimeError as exc:  # some graphs cannot be optimised (e.g. without MKLDNN)
        rows.append({**_row("optimize_for_inference", "optimized", "scripted", None, base), "note": str(exc)[:80]})
    return rows


def format_rows(path: str, other: str, device: str, max_batch: int, precision: str, budget_s: float) -> list[dict]:
    """AOTInductor package vs TorchScript as the worker runs it (frozen, optimize_for_inference) at every
    bucket size up to ``max_batch``; ``path`` and ``other`` are the same model in the two formats."""
    first, second = (load_model(p, device, max_batch, precision, optimize="auto") for p in (path, other))
    package, script = (first, second) if isinstance(first.module, PackagedModel) else (second, first)
    if not isinstance(package.module, PackagedModel) or isinstance(script.module, PackagedModel):
        row = _row("AOTInductor package", "package (.pt2)", "TorchScript", None, None)
        return [{**row, "note": "--compare needs one .pt2 package and one TorchScript file"}]
    frozen = not any(True for _ in script.module.parameters())  # freezing inlines the weights as constants
    label = "TorchScript frozen+optimized" if frozen else "TorchScript (optimize_for_inference refused)"
    rows = []
    for size in bucket_sizes(max_batch):
        x = _inputs(package, size, package.device)
        on, off = _time(package.module, x, budget_s=budget_s), _time(script.module, x, budget_s=budget_s)
        rows.append(_row(f"AOTInductor package, batch {size}", "package (.pt2)", label, on, off))
    return rows


def report(
    path: str,
    device: str,
    max_batch: int,
    eager: str | None = None,
    budget_s: float = 1.0,
    max_latency_ms: float | None = None,
    compare: str | None = None,
) -> dict:
    """Measure every practice; return ``{"device", "model", "batch", "sweep", "practices"}``."""
    model = load_model(path, device, max_batch)
    model.warm_up(rounds=1)
    sweep = time_buckets(model, bucket_sizes(max_batch), budget_s=budget_s)
    n = max(choose_batch_size(sweep, max_latency_ms), 2)
    x = _inputs(model, n, model.device)
    base = _time(model.module, x, budget_s=budget_s)
    rows = [
        _row("inference mode", "inference_mode", "autograd on", base, _time(model.module, x, "grad", budget_s)),
        _row("inference mode", "inference_mode", "no_grad", base, _time(model.module, x, "no_grad", budget_s)),
    ]
    if model.device.type == "cuda":
        with _cudnn_benchmark(False):
            off = _time(model.module, x, budget_s=budget_s)
        on = _time(model.module, x, budget_s=budget_s)
        rows.append(_row("cuDNN autotune", "benchmark=True", "benchmark=False", on, off))
        cpu = load_model(path, "cpu", n)
        cpu_timing = _time(cpu.module, _inputs(cpu, n, cpu.device), budget_s=max(budget_s, 1.0))
        rows.append(_row("GPU vs CPU", str(model.device), "cpu", base, cpu_timing))
    else:
        rows.append({**_row("cuDNN autotune", "benchmark=True", "benchmark=False", None, None), "note": "no GPU"})
        rows.append({**_row("GPU vs CPU", "cuda", "cpu", None, base), "note": "no GPU"})
    rows.extend(_script_rows(model, x, base, eager, budget_s))
    one = _time(model.module, _inputs(model, 1, model.device), budget_s=budget_s)
    rows.append(_row("batching", f"batch {n}", "batch 1", base, one))
    if compare:
        rows += format_rows(path, compare, device, max_batch, PRECISIONS[model.dtype], budget_s)
    return {
        "device": _device_name(model.device),
        "model": model.info.tag,
        "batch": n,
        "sweep": [asdict(t) for t in sweep],
        "practices": rows,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render(result: dict) -> str:
    """The report as Markdown tables a user can read."""
    lines = [f"model {result['model']} on {result['device']}; practices measured at batch {result['batch']}", ""]
    lines += ["| practice | with | without | with img/s | without img/s | gain |", "|---|---|---|---:|---:|---:|"]
    for r in result["practices"]:
        gain = _fmt(r["gain"], ".2f") + ("x" if r["gain"] else f" ({r.get('note', '')})")
        lines.append(
            f"| {r['practice']} | {r['with']} | {r['without']} | {_fmt(r['with_images_per_s'], '.1f')} "
            f"| {_fmt(r['without_images_per_s'], '.1f')} | {gain} |"
        )
    lines += ["", "| batch | ms/batch | images/s |", "|---:|---:|---:|"]
    lines += [f"| {t['batch']} | {t['ms_per_batch']:.2f} | {t['images_per_s']:.1f} |" for t in result["sweep"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """CLI of ``python -m worker bench``."""
    parser = argparse.ArgumentParser(prog="python -m worker bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-batch", type=int, default=64 if torch.cuda.is_available() else 16)
    parser.add_argument("--max-batch-latency-ms", type=float, help="ignore batch sizes slower than this")
    parser.add_argument("--eager", help="module:factory building the eager model, to compare with TorchScript")
    parser.add_argument("--budget-s", type=float, default=1.0, help="timing budget per configuration")
    other = "the same model in the other format (.pt2 or TorchScript): adds package vs TorchScript rows per batch"
    parser.add_argument("--compare", metavar="FILE", help=other)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--plot", type=Path, help="also draw a PNG here (from a checkout, bench extra)")
    args = parser.parse_args(argv)
    result = report(
        args.model, args.device, args.max_batch, args.eager, args.budget_s, args.max_batch_latency_ms, args.compare
    )
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        try:  # plotting lives with the benchmarks (matplotlib is not a worker dependency)
            from bench.plots import practices_plot
        except ImportError:
            print("no plot: run from a checkout with the bench extra (python -m bench.practices)", file=sys.stderr)
            return 0
        if practices_plot(result, args.plot) is None:
            print("no plot: matplotlib is not installed (pip install '.[bench]')", file=sys.stderr)
    return 0
