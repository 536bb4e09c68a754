"""Model files: export, metadata, batched == one-by-one, and which format a file is (the .pt2 package's own tests,
which compile one, are in tests/process/test_pt2.py)."""

from __future__ import annotations

import argparse

import pytest
import torch

from worker.decode.cpu import Limits, Preprocess
from worker.export import ExportError, ExportSpec, add_arguments, export, spec_from
from worker.model import ModelError, bucket_sizes, load_model, read_extra_files
from worker.modelfile import is_package
from worker.tasks import decode_image as decode

from ..conftest import all_images


def test_export_embeds_labels_preprocessing_and_identity(tiny_model_path):
    module, info = read_extra_files(tiny_model_path)
    assert isinstance(module, torch.jit.ScriptModule)
    assert info.tag == "tiny@7" and info.labels[3] == "class3"
    assert info.preprocess == Preprocess(size=(32, 32), resize="stretch")


def test_export_refuses_labels_that_do_not_match_the_outputs(tmp_path):
    spec = ExportSpec(
        factory="tests.tinymodels:tiny_cnn",
        out=tmp_path / "m.pt",
        name="m",
        version="1",
        preprocess=Preprocess(size=(32, 32)),
        labels=("a", "b"),
    )
    with pytest.raises(ExportError, match="2 labels for a model with 10 outputs"):
        export(spec)
    assert not spec.out.exists()


def test_export_refuses_a_model_that_is_not_a_classifier(tmp_path):
    spec = ExportSpec(
        factory="tests.tinymodels:flat_model",
        out=tmp_path / "m.pt",
        name="m",
        version="1",
        preprocess=Preprocess(size=(8, 8)),
    )
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


def test_a_torchscript_file_or_any_other_file_is_not_a_package(tiny_model_path, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a zip")
    assert not is_package(tiny_model_path) and not is_package(junk) and not is_package(tmp_path / "absent")
    assert is_package(tmp_path / "absent.pt2")  # by its name: the package loader then says what is wrong


def export_flags(*argv: str) -> ExportSpec:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return spec_from(parser.parse_args(["--factory", "tests.tinymodels:tiny_cnn", *argv]))


def test_the_export_format_follows_the_output_suffix_unless_given():
    assert export_flags("--out", "m.pt2").format == "pt2"
    assert export_flags("--out", "m.pt").format == "torchscript"
    assert export_flags("--out", "m.pt2", "--format", "torchscript").format == "torchscript"
    demo = export_flags("--demo", "--out", "x.pt2", "--device", "cuda", "--precision", "bf16")
    assert (demo.name, demo.format, demo.device, demo.precision) == ("efficientnet-lite0", "pt2", "cuda", "bf16")
    assert demo.cpu_arch == "native"
    assert export_flags("--out", "x.pt2", "--cpu-arch", "x86-64-v3").cpu_arch == "x86-64-v3"


def test_export_refuses_options_that_do_not_fit_the_format(tmp_path):
    base = {"factory": "tests.tinymodels:tiny_cnn", "name": "m", "version": "1", "preprocess": Preprocess((8, 8))}
    with pytest.raises(ExportError, match=r"path ending in \.pt2"):
        export(ExportSpec(out=tmp_path / "m.pt", format="pt2", **base))
    with pytest.raises(ExportError, match=r"for \.pt2 packages; TorchScript runs anywhere"):
        export(ExportSpec(out=tmp_path / "m.pt", precision="bf16", **base))
    with pytest.raises(ExportError, match=r"--cpu-arch are for \.pt2 packages"):
        export(ExportSpec(out=tmp_path / "m.pt", cpu_arch="x86-64-v3", **base))
    with pytest.raises(ExportError, match=r"unknown --cpu-arch 'i386'"):
        export(ExportSpec(out=tmp_path / "m.pt2", format="pt2", cpu_arch="i386", **base))
    if not torch.cuda.is_available():
        with pytest.raises(ExportError, match="no CUDA device here"):
            export(ExportSpec(out=tmp_path / "m.pt2", format="pt2", device="cuda", **base))
    assert list(tmp_path.iterdir()) == []


def test_a_device_out_of_memory_at_load_is_passed_on_not_called_a_bad_model_file(tiny_model_path, monkeypatch):
    """A bad file exits 2 (final under --burst); a device another process has filled exits 1 and is restarted (and
    a reload retries it after a back-off): the load must not word the second as the first."""

    def device_full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(torch.jit, "load", device_full)
    with pytest.raises(torch.OutOfMemoryError):
        read_extra_files(tiny_model_path)


def test_optimize_auto_falls_back_to_the_plain_model_on_its_failure_but_not_on_a_full_device(
    tiny_model_path, monkeypatch, caplog
):
    def fails(module: object) -> object:
        raise RuntimeError("unsupported op in freeze")

    monkeypatch.setattr(torch.jit, "optimize_for_inference", fails)
    model = load_model(tiny_model_path, max_batch=4, optimize="auto")
    assert isinstance(model.module, torch.jit.ScriptModule) and "optimize_for_inference failed" in caplog.text

    def full(module: object) -> object:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch.jit, "optimize_for_inference", full)
    with pytest.raises(torch.OutOfMemoryError):  # not a slower model for good: the load fails, a reload retries
        load_model(tiny_model_path, max_batch=4, optimize="auto")
