"""Model files end to end: the demo model's real predictions, and the export CLI in its own process (seconds each,
so not in the unit tier)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from worker.decode.cpu import Limits, Preprocess
from worker.model import load_model, read_extra_files
from worker.tasks import decode_image as decode

from ..conftest import ROOT, image_bytes
from ..tinymodels import tiny_cnn


@pytest.mark.slow
def test_demo_model_sees_espresso_in_coffee_and_batches_match(demo_model_path):
    model = load_model(demo_model_path, max_batch=4)
    assert model.info.tag == "efficientnet-lite0@1" and len(model.info.labels) == 1000
    names = ["coffee.jpg", "odd_cmyk.jpg", "odd.webp", "cat.jpg"]
    batch = torch.stack([decode(image_bytes(n), model.info.preprocess, Limits()) for n in names])
    top5 = model.predict(batch, k=5)
    assert "espresso" in [label for label, _ in top5[0]]
    assert top5[0][0][0] == top5[1][0][0] == top5[2][0][0] == "espresso"
    assert top5[3][0][0] in ("Egyptian cat", "tiger cat", "tabby")
    alone = torch.cat([model.logits(batch[i : i + 1]) for i in range(4)])
    assert (model.logits(batch) - alone).abs().max().item() <= 1e-5


def test_export_cli_builds_from_a_factory_with_weights_labels_and_preprocessing(tmp_path):
    weights = tmp_path / "w.pt"
    state = tiny_cnn().state_dict()
    state["head.bias"] = torch.arange(10, dtype=torch.float32)  # weights that differ from the factory's
    torch.save(state, weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing {i}" for i in range(10)) + "\n")
    out = tmp_path / "custom.pt"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "export",
            "--factory",
            "tests.tinymodels:tiny_cnn",
            "--weights",
            str(weights),
            "--labels",
            str(labels),
            "--size",
            "16",
            "24",
            "--resize",
            "stretch",
            "--mean",
            "0.5",
            "0.5",
            "0.5",
            "--std",
            "0.25",
            "0.25",
            "0.25",
            "--name",
            "custom",
            "--version",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "custom@2, 10 classes" in done.stdout
    module, info = read_extra_files(out)
    assert info.labels[9] == "thing 9"
    assert info.preprocess == Preprocess(size=(16, 24), resize="stretch", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.equal(module.state_dict()["head.bias"], torch.arange(10, dtype=torch.float32))
