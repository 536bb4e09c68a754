"""AOTInductor ``.pt2`` packages: the same metadata and predictions as the TorchScript file of the same module,
no TorchScript call (nor its deprecation warning) on their path, device and precision refused in one line, the
export's check against eager, and a worker serving jobs from one. The package is compiled once per session
(tens of seconds), hence the process tier."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from producer import Producer
from worker import cpuisa
from worker.decode.cpu import Limits
from worker.export import ExportError, ExportSpec, export, verify
from worker.model import ModelError, load_model
from worker.modelfile import is_package
from worker.pt2 import load_package
from worker.tasks import decode_image as decode

from ..conftest import ROOT, all_images, wait_for_workers


def rewritten(package: Path, out: Path, entry: str, content: str | None) -> Path:
    """A copy of ``package`` with its ``extra/<entry>`` replaced by ``content`` (``None``: removed)."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            if item.filename.endswith(f"/extra/{entry}"):
                if content is not None:
                    dst.writestr(item, content)
            else:
                dst.writestr(item, src.read(item))
    return out


def image_batch(preprocess: object) -> torch.Tensor:
    return torch.stack([decode(p.read_bytes(), preprocess, Limits()) for p in all_images()])


def test_a_package_carries_the_torchscript_files_metadata(pt2_model_path, tiny_model_path):
    package, script = load_model(pt2_model_path), load_model(tiny_model_path)
    assert is_package(pt2_model_path) and not is_package(tiny_model_path)
    assert package.info == script.info and package.info.tag == "tiny@7"


def test_a_package_is_recognised_by_its_content_whatever_its_name(pt2_model_path, tmp_path):
    renamed = shutil.copy(pt2_model_path, tmp_path / "model.bin")
    assert is_package(renamed)
    assert load_model(renamed).info.tag == "tiny@7"


def test_package_and_torchscript_agree_on_every_example_image(pt2_model_path, tiny_model_path):
    package, script = load_model(pt2_model_path, max_batch=8), load_model(tiny_model_path, max_batch=8, optimize="auto")
    batch = image_batch(package.info.preprocess)
    for ours, theirs in zip(package.predict(batch, k=5), script.predict(batch, k=5), strict=True):
        assert ours[0][0] == theirs[0][0]  # top-1 identical
        probs = dict(ours)
        assert all(abs(probs[label] - p) <= 1e-3 for label, p in theirs if label in probs)
        assert max(abs(a - b) for (_, a), (_, b) in zip(ours, theirs, strict=True)) <= 1e-3


def test_a_package_loads_and_predicts_with_no_torchscript_call(pt2_model_path, monkeypatch):
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("torch.jit called on the .pt2 path")

    for name in ("load", "save", "script", "trace", "freeze", "optimize_for_inference"):
        monkeypatch.setattr(torch.jit, name, refuse)
    model = load_model(pt2_model_path, max_batch=8, optimize="auto")
    model.warm_up(rounds=1)
    assert len(model.predict(image_batch(model.info.preprocess), k=3)) == len(all_images())


def test_only_the_torchscript_path_emits_a_deprecation_warning(pt2_model_path, tiny_model_path):
    code = (
        "import sys, torch\nfrom worker.model import load_model\n"
        "m = load_model(sys.argv[1], max_batch=4, optimize='auto'); m.warm_up(rounds=1)\n"
        "m.predict(torch.zeros((3, 32, 32, 3), dtype=torch.uint8))\n"
    )

    def stderr_of(path: Path) -> str:
        env = {**os.environ, "PYTHONWARNINGS": "default"}
        command = [sys.executable, "-c", code, str(path)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "DeprecationWarning" in stderr_of(tiny_model_path)  # the check can see it ...
    assert "Warning" not in stderr_of(pt2_model_path)  # ... and the package path has none


def test_a_package_batches_like_torchscript_in_inference_mode(pt2_model_path):
    model = load_model(pt2_model_path, max_batch=32)
    assert not model.module.training
    batch = image_batch(model.info.preprocess)
    together = model.logits(batch)  # padded to the bucket of 32
    alone = torch.cat([model.logits(batch[i : i + 1]) for i in range(len(batch))])
    assert together.shape == (len(batch), 10) and together.is_inference()
    assert (together - alone).abs().max().item() <= 1e-5


def test_a_package_for_another_device_kind_is_refused_in_one_line(pt2_model_path, tmp_path):
    facts = json.loads(zipfile.ZipFile(pt2_model_path).read("tiny/extra/package.json"))
    cuda = rewritten(pt2_model_path, tmp_path / "cuda.pt2", "package.json", json.dumps({**facts, "device": "cuda"}))
    with pytest.raises(ModelError) as on_cpu:
        load_model(cuda, "cpu")
    hint = "export it again with --device cpu"
    assert str(on_cpu.value) == f"{cuda}: package compiled for cuda, cannot run on cpu; {hint}"
    with pytest.raises(ModelError, match=r"compiled for cpu, cannot run on cuda:0; export it again with --device cuda"):
        load_model(pt2_model_path, "cuda:0")  # refused before anything touches CUDA: no GPU needed


def test_a_package_runs_only_in_the_precision_it_was_compiled_for(pt2_model_path):
    with pytest.raises(ModelError, match=r"compiled for fp32, cannot run in bf16; export it again with --precision"):
        load_model(pt2_model_path, precision="bf16")


def test_a_package_without_metadata_is_refused(pt2_model_path, tmp_path):
    bare = rewritten(pt2_model_path, tmp_path / "bare.pt2", "labels.json", None)
    with pytest.raises(ModelError, match=r"lacks labels.json"):
        load_model(bare)
    with pytest.raises(ModelError, match=r"not an AOTInductor .pt2 package"):
        load_model(shutil.copy(ROOT / "pyproject.toml", tmp_path / "text.pt2"))


def test_export_removes_a_package_whose_outputs_differ_from_eager(pt2_model_path, tmp_path):
    out = Path(shutil.copy(pt2_model_path, tmp_path / "copy.pt2"))
    preprocess = load_model(out).info.preprocess
    spec = ExportSpec("tests.tinymodels:tiny_cnn", out, "tiny", "7", preprocess, format="pt2")
    example = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        right = load_model(out).module(example)
    assert verify(spec, example, right)["max_abs_diff"] <= 1e-5
    with pytest.raises(ExportError, match=r"differs from eager by .*; file removed"):
        verify(spec, example, right + 0.01)
    assert not out.exists()


def test_a_worker_serves_jobs_from_a_package_with_no_torch_deprecation_warning(
    redis_url, conn, start_worker, pt2_model_path, tiny_model_path, capfd
):
    env = {"PYTHONWARNINGS": "default"}
    proc = start_worker("--batch-size", "4", "--max-wait-ms", "20", model=pt2_model_path, env=env)
    wait_for_workers(conn)
    producer = Producer(redis_url)
    paths = all_images()
    ids = producer.enqueue_many(paths)
    script = load_model(tiny_model_path, max_batch=8)
    expected = script.predict(image_batch(script.info.preprocess), k=1)
    for job_id, want in zip(ids, expected, strict=True):
        result = producer.result(job_id, timeout=60)
        assert result["ok"] and result["model"] == "tiny@7"
        assert result["label"] == want[0][0] and len(result["topk"]) == 5
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    stderr = capfd.readouterr().err
    assert "format=pt2" in stderr  # the worker's own log: its stderr is what we read
    warnings = [line for line in stderr.splitlines() if "Warning:" in line and "torch" in line]
    assert warnings == []


def test_a_package_records_the_cpu_it_needs_and_a_cpu_without_it_is_refused_in_one_line(pt2_model_path, tmp_path):
    facts = json.loads(zipfile.ZipFile(pt2_model_path).read("tiny/extra/package.json"))
    here = cpuisa.host_features()
    assert facts["cpu"]["machine"] == platform.machine() and facts["cpu"]["arch"] == "native"
    assert set(facts["cpu"]["features"]) == set(here or ())  # -march=native: whatever this CPU has
    lacking = sorted(cpuisa.X86_ISA - (here or frozenset()))[:1]
    if here is None or not lacking:
        pytest.skip("this CPU's features cannot be read, or it has every one")
    needs = {**facts, "cpu": {**facts["cpu"], "features": [*facts["cpu"]["features"], *lacking]}}
    other = rewritten(pt2_model_path, tmp_path / "elsewhere.pt2", "package.json", json.dumps(needs))
    with pytest.raises(ModelError) as refused:
        load_model(other)
    assert str(refused.value) == (
        f"{other}: package compiled for the build machine's instruction set (-march=native), which needs "
        f"{lacking[0]}: this CPU lacks them; export it again on this kind of machine (x86: or with --cpu-arch "
        "x86-64-v3, for any AVX2 CPU)"
    )


def instructions(package: Path, tmp_path: Path) -> str:
    """The disassembly of every compiled library in ``package``."""
    text = []
    with zipfile.ZipFile(package) as archive:
        for name in (n for n in archive.namelist() if n.endswith(".so")):
            lib = tmp_path / Path(name).name
            lib.write_bytes(archive.read(name))
            text.append(subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True, check=True).stdout)
    assert text, "no compiled library in the package"
    return "\n".join(text)


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not cpuisa.LEVELS["x86-64-v3"][0] <= (cpuisa.host_features() or frozenset()),
    reason="an x86-64-v3 package is built and checked on an x86-64 CPU with AVX2",
)
def test_a_package_for_an_x86_64_level_holds_no_wider_instructions_and_predicts_as_the_native_one(
    pt2_model_path, tmp_path
):
    native = load_model(pt2_model_path)
    spec = ExportSpec(
        "tests.tinymodels:tiny_cnn", tmp_path / "v3.pt2", "tiny", "7", native.info.preprocess,
        labels=native.info.labels, format="pt2", cpu_arch="x86-64-v3",
    )  # fmt: skip
    lines = []
    export(spec, progress=lines.append)  # compiles: tens of seconds
    facts = json.loads(zipfile.ZipFile(spec.out).read("v3/extra/package.json"))
    assert facts["cpu"]["arch"] == "x86-64-v3" and "avx2" in facts["cpu"]["features"]
    assert not any(f.startswith("avx512") for f in facts["cpu"]["features"])
    assert any("CPU code for x86-64-v3" in line for line in lines)
    if shutil.which("objdump"):  # AVX-512 code names zmm registers; AVX2 code only ymm
        code = instructions(spec.out, tmp_path)
        assert "%ymm" in code and "%zmm" not in code
        if {"avx512f"} <= (cpuisa.host_features() or frozenset()):
            assert "%zmm" in instructions(pt2_model_path, tmp_path)  # the native package here does use them
    batch = image_batch(native.info.preprocess)
    assert torch.equal(load_model(spec.out).logits(batch).argmax(1), native.logits(batch).argmax(1))


def test_a_cuda_package_the_device_has_no_room_for_is_out_of_memory_not_a_bad_file(
    pt2_model_path, tmp_path, monkeypatch
):
    facts = json.loads(zipfile.ZipFile(pt2_model_path).read("tiny/extra/package.json"))
    cuda = rewritten(pt2_model_path, tmp_path / "cuda.pt2", "package.json", json.dumps({**facts, "device": "cuda"}))
    reason = "CUDA error: out of memory"  # how AOTInductor's constant allocation (cudaMalloc) reports it

    def full_device(path: str, device_index: int = -1) -> None:
        raise RuntimeError(reason)

    monkeypatch.setattr(torch._inductor, "aoti_load_package", full_device)  # no GPU here: the device's answer
    with pytest.raises(torch.OutOfMemoryError, match="out of memory loading the package"):
        load_package(cuda, torch.device("cuda:0"))  # a reload retries it after a back-off; a start exits 1
    reason = "Error in dlopen: undefined symbol"
    with pytest.raises(ModelError, match="cannot load the AOTInductor package"):
        load_package(cuda, torch.device("cuda:0"))


def test_a_package_from_a_newer_torch_is_refused_and_one_from_an_older_loads_with_a_warning(
    pt2_model_path, tmp_path, caplog
):
    facts = json.loads(zipfile.ZipFile(pt2_model_path).read("tiny/extra/package.json"))
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    newer = rewritten(
        pt2_model_path, tmp_path / "newer.pt2", "package.json", json.dumps({**facts, "torch": f"{major}.{minor + 1}.0"})
    )
    with pytest.raises(ModelError, match=rf"built with torch {major}\.{minor + 1}\.0, newer than this worker's"):
        load_model(newer)
    older = rewritten(
        pt2_model_path, tmp_path / "older.pt2", "package.json", json.dumps({**facts, "torch": f"{major}.{minor - 1}.1"})
    )
    with caplog.at_level("WARNING", logger="worker.pt2"):
        assert load_model(older).info.tag == "tiny@7"
    assert f"package built with torch {major}.{minor - 1}.1, this worker runs" in caplog.text
