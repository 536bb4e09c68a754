"""Model files: export, metadata, batched == one-by-one, and the real demo model's predictions."""

from __future__ import annotations

import pytest
import torch

from worker.decode.cpu import Limits, Preprocess
from worker.export import ExportError, ExportSpec, export
from worker.model import ModelError, bucket_sizes, load_model, read_extra_files
from worker.tasks import decode_image as decode

from ..conftest import all_images, image_bytes


def test_export_embeds_labels_preprocessing_and_identity(tiny_model_path):
    module, info = read_extra_files(tiny_model_path)
    assert isinstance(module, torch.jit.ScriptModule)
    assert info.tag == "tiny@7" and info.labels[3] == "class3"
    assert info.preprocess == Preprocess(size=(32, 32), resize="stretch")


def test_export_refuses_labels_that_do_not_match_the_outputs(tmp_path):
    spec = ExportSpec(factory="tests.tinymodels:tiny_cnn", out=tmp_path / "m.pt", name="m", version="1",
                      preprocess=Preprocess(size=(32, 32)), labels=("a", "b"))  # fmt: skip
    with pytest.raises(ExportError, match="2 labels for a model with 10 outputs"):
        export(spec)
    assert not spec.out.exists()


def test_export_refuses_a_model_that_is_not_a_classifier(tmp_path):
    spec = ExportSpec(factory="tests.tinymodels:flat_model", out=tmp_path / "m.pt", name="m", version="1",
                      preprocess=Preprocess(size=(8, 8)))  # fmt: skip
    with pytest.raises(ExportError, match="logits"):
        export(spec)


def test_a_torchscript_file_without_metadata_is_refused(tmp_path):
    path = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ModelError, match=r"lacks labels.json"):
        load_model(path)


def test_bucket_sizes_are_powers_of_two_up_to_the_cap():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(12) == [1, 2, 4, 8, 12]


def test_batched_outputs_equal_one_by_one_outputs(tiny_model_path):
    model = load_model(tiny_model_path, max_batch=32)
    model.warm_up(rounds=1)
    batch = torch.stack([decode(p.read_bytes(), model.info.preprocess, Limits()) for p in all_images()])
    together = model.logits(batch)  # 20 images, padded to the bucket of 32
    alone = torch.cat([model.logits(batch[i : i + 1]) for i in range(len(batch))])
    assert together.shape == (len(batch), 10)
    assert (together - alone).abs().max().item() <= 1e-5


def test_the_model_runs_in_eval_and_inference_mode_with_cudnn_autotune(tiny_model_path):
    model = load_model(tiny_model_path, max_batch=4)
    assert not model.module.training
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.enabled
    out = model.logits(torch.zeros((3, 32, 32, 3), dtype=torch.uint8))
    assert out.is_inference() and out.shape == (3, 10)


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
    import subprocess
    import sys

    from ..conftest import ROOT
    from ..tinymodels import tiny_cnn

    weights = tmp_path / "w.pt"
    state = tiny_cnn().state_dict()
    state["head.bias"] = torch.arange(10, dtype=torch.float32)  # weights that differ from the factory's
    torch.save(state, weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing {i}" for i in range(10)) + "\n")
    out = tmp_path / "custom.pt"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "export", "--factory", "tests.tinymodels:tiny_cnn", "--weights",
         str(weights), "--labels", str(labels), "--size", "16", "24", "--resize", "stretch", "--mean", "0.5",
         "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--name", "custom", "--version", "2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "custom@2, 10 classes" in done.stdout
    module, info = read_extra_files(out)
    assert info.labels[9] == "thing 9"
    assert info.preprocess == Preprocess(size=(16, 24), resize="stretch", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.equal(module.state_dict()["head.bias"], torch.arange(10, dtype=torch.float32))
