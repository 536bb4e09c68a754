"""``--precision auto``: a half precision in the channels_last layout where it gives fp32's answers.

On a CUDA device a TorchScript model is loaded in fp16 with NHWC (channels_last) weights and input, the
layout tensor cores run, and in fp32; both classify the calibration photos shipped with the worker
(``worker/calibration``: the demo photos at 256 px). fp16 is kept only when every photo's top-1 label is
fp32's; otherwise the worker serves fp32 and says why in one line. Everywhere else ``auto`` is the model's
own precision: fp32 for a TorchScript file, the compiled one for a ``.pt2`` package.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .decode.cpu import Limits, decode
from .model import Classifier, load_model
from .modelfile import ModelError, is_package
from .pt2 import PRECISIONS

log = logging.getLogger(__name__)

CALIBRATION = Path(__file__).resolve().parent / "calibration"


@dataclass(frozen=True)
class Agreement:
    """How a model's answers compare with a reference's on the calibration photos."""

    same_top1: int
    photos: int
    max_top5_diff: float  # the largest difference of a top-5 probability, label by label

    @property
    def agrees(self) -> bool:
        return self.photos > 0 and self.same_top1 == self.photos


def calibration_batch(model: Classifier) -> torch.Tensor:
    """The calibration photos decoded for ``model`` as the worker decodes jobs: uint8 ``[N, H, W, 3]``."""
    spec = model.info.preprocess
    pixels = [decode(path.read_bytes(), spec, Limits()) for path in sorted(CALIBRATION.glob("*.jpg"))]
    flat = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in pixels]
    return torch.stack(flat).view(len(flat), *spec.size, 3)


def agreement(candidate: Classifier, reference: Classifier, batch: torch.Tensor) -> Agreement:
    """Top-1 matches and the largest top-5 probability difference between two models on ``batch``."""
    ours, theirs = candidate.predict(batch, k=5), reference.predict(batch, k=5)
    same = sum(a[0][0] == b[0][0] for a, b in zip(ours, theirs, strict=True))
    diff = 0.0
    for a, b in zip(ours, theirs, strict=True):
        probs = dict(a)
        diff = max([diff, *(abs(probs[label] - p) for label, p in b if label in probs)])
    return Agreement(same, len(ours), diff)


def load_auto(
    path: str, device: str, max_batch: int, optimize: str = "off", candidate: str = "fp16"
) -> tuple[Classifier, str]:
    """The model for ``--precision auto`` and the precision it runs in (see the module's docstring).
    ``candidate`` is the half precision tried on CUDA (tests try bf16 on a CPU, which runs it too)."""
    dev = torch.device(device)
    if is_package(path) or (dev.type != "cuda" and candidate == "fp16"):
        model = load_model(path, device, max_batch, "auto", optimize)
        return model, PRECISIONS[model.dtype]
    fast = load_model(path, device, max_batch, candidate, optimize, channels_last=True)
    reference = load_model(path, device, 1, "fp32", optimize)
    found = agreement(fast, reference, calibration_batch(reference))
    if found.agrees:
        log.info(
            "precision auto: %s channels_last (top-1 as fp32 on %d/%d calibration photos, top-5 within %.1e)",
            candidate,
            found.same_top1,
            found.photos,
            found.max_top5_diff,
        )
        return fast, candidate
    log.warning(
        "precision auto: fp32, since %s changes the top-1 label of %d of %d calibration photos",
        candidate,
        found.photos - found.same_top1,
        found.photos,
    )
    del fast
    return load_model(path, device, max_batch, "fp32", optimize), "fp32"


def recheck(model: Classifier, path: str, optimize: str = "off") -> None:
    """A new version for a swap under ``--precision auto``, loaded in the half precision the worker settled on at
    start, must give fp32's top-1 on the calibration photos too: ``ModelError`` otherwise (the running version
    keeps serving; a restart settles the precision again, and the result cache's key with it)."""
    if model.dtype == torch.float32 or is_package(path):  # a package runs as compiled: its export checked it
        return
    reference = load_model(path, str(model.device), 1, "fp32", optimize)
    found = agreement(model, reference, calibration_batch(reference))
    del reference
    if not found.agrees:
        half = PRECISIONS[model.dtype]
        raise ModelError(
            f"{model.info.tag} in {half} changes the top-1 label of {found.photos - found.same_top1} of "
            f"{found.photos} calibration photos (--precision auto settled on {half} at start): restart the "
            "worker to serve it in fp32"
        )
