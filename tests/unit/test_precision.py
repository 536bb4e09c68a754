"""--precision auto: a half precision in channels_last is kept only where it gives fp32's top-1 on the
calibration photos (tried on this CPU with bf16, which it runs; CUDA tries fp16 the same way)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.config import WorkerSettings
from worker.decode.cpu import Preprocess
from worker.export import ExportSpec, export
from worker.model import ModelError, load_model
from worker.precision import CALIBRATION, agreement, calibration_batch, load_auto
from worker.startup import load_warm


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("precision")
    paths = {}
    for name, labels in (("dominant", 4), ("half_flips", 2)):
        paths[name] = out / f"{name}.pt"
        export(
            ExportSpec(
                factory=f"tests.tinymodels:{name}",
                out=paths[name],
                name=name,
                version="1",
                preprocess=Preprocess(size=(32, 32), resize="stretch"),
                labels=tuple(f"class{i}" for i in range(labels)),
                method="script",  # half_flips branches on the dtype: a trace would keep fp32's branch only
            )
        )
    return paths


def test_the_calibration_photos_ship_with_the_worker_and_decode_as_jobs_do(models):
    model = load_model(models["dominant"])
    batch = calibration_batch(model)
    assert len(list(CALIBRATION.glob("*.jpg"))) == batch.shape[0] >= 8 and batch.shape[1:] == (32, 32, 3)
    assert batch.dtype == torch.uint8 and int(batch.float().std()) > 10  # photos, not blank frames


def test_a_half_precision_that_keeps_every_top1_is_kept_in_channels_last(models):
    model, precision = load_auto(str(models["dominant"]), "cpu", 8, candidate="bf16")
    assert precision == "bf16" and model.dtype == torch.bfloat16 and model.channels_last


def test_a_half_precision_that_changes_a_top1_falls_back_to_fp32(models, caplog):
    model, precision = load_auto(str(models["half_flips"]), "cpu", 8, candidate="bf16")
    assert precision == "fp32" and model.dtype == torch.float32 and not model.channels_last
    assert "changes the top-1 label of 9 of 9 calibration photos" in caplog.text


def test_auto_on_a_cpu_is_fp32(models):
    model, precision = load_auto(str(models["dominant"]), "cpu", 8)
    assert precision == "fp32" and model.dtype == torch.float32 and not model.channels_last


def test_channels_last_gives_the_contiguous_layouts_logits(tiny_model_path):
    plain, nhwc = (load_model(tiny_model_path, "cpu", 4, channels_last=flag) for flag in (False, True))
    batch = calibration_batch(plain)
    assert nhwc.channels_last and torch.allclose(nhwc.logits(batch), plain.logits(batch), atol=1e-5)
    same = agreement(nhwc, plain, batch)
    assert same.agrees and same.max_top5_diff < 1e-5


def test_a_new_version_whose_half_precision_answers_differ_is_refused_for_a_swap_not_served(models, tmp_path):
    settings = WorkerSettings(model=str(models["dominant"]), batch_size=8, precision="bf16", device="cpu")
    kept = load_warm(settings, str(models["dominant"]), 8, auto=True)  # bf16 still answers as fp32: kept
    assert kept.dtype == torch.bfloat16
    with pytest.raises(ModelError, match=r"in bf16 changes the top-1 label of 9 of 9 calibration photos"):
        load_warm(settings, str(models["half_flips"]), 8, auto=True)
    flips = load_warm(settings, str(models["half_flips"]), 8)  # bf16 asked for by name: served as asked
    assert flips.dtype == torch.bfloat16
