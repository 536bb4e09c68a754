"""The reloader's decisions (no Redis): what a refused reload retries, what a swap keeps from an out-of-memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from worker.config import WorkerSettings
from worker.infer import Predictor
from worker.model import load_model
from worker.reload import Reloader, file_identity
from worker.startup import load_warm

from ..conftest import wait_for


@pytest.fixture
def link(tmp_path: Path, tiny_model_path: Path) -> Path:
    path = tmp_path / "current.pt"
    path.symlink_to(tiny_model_path)
    return path


def test_a_reload_refused_for_out_of_memory_is_tried_again_after_a_back_off(link, tiny_model_path, monkeypatch):
    monkeypatch.setattr("worker.reload.OOM_RETRY_S", 0.3)
    predictor = Predictor(load_model(tiny_model_path, max_batch=4), cap=4)
    attempts: list[str] = []

    def load(path: str):
        attempts.append(path)
        if len(attempts) <= 2:
            raise torch.OutOfMemoryError("CUDA out of memory (a transient peak)")
        return load_model(path, max_batch=4)

    reloader = Reloader(str(link), predictor, load, identity=None)
    assert not reloader.reload() and reloader.refused == 1
    assert not reloader._changed()  # not at the next poll: each try loads a copy beside the serving one
    assert wait_for(reloader._changed)  # the same file again, once the back-off has passed
    assert not reloader.reload() and not reloader._changed()  # refused again: the back-off doubled
    other = link.parent / "other.pt"
    other.write_bytes(Path(tiny_model_path).read_bytes())
    flip(link, other)
    assert reloader._changed()  # a new file is tried at once
    assert reloader.reload() and reloader.swapped == 1 and not reloader._changed()
    assert attempts == [str(tiny_model_path)] * 2 + [str(other)]  # the symlink resolved once per reload


def flip(link: Path, target: Path) -> None:
    tmp = link.with_suffix(".new")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def test_a_bad_file_is_refused_once_not_at_every_poll(link, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    predictor = Predictor(load_model(link, max_batch=2), cap=2)
    reloader = Reloader(
        str(link), predictor, lambda path: load_model(path, max_batch=2), identity=file_identity(str(link))
    )
    tmp = link.with_suffix(".new")
    tmp.symlink_to(broken)
    os.replace(tmp, link)
    assert reloader._changed() and not reloader.reload()
    assert not reloader._changed()


def test_a_new_version_is_warmed_and_run_only_up_to_a_cap_an_out_of_memory_lowered(tiny_model_path):
    settings = WorkerSettings(model=str(tiny_model_path), batch_size=8, precision="fp32")
    predictor = Predictor(load_model(tiny_model_path, max_batch=8), cap=8)
    predictor.cap = 3  # lowered by an out-of-memory at batch 6
    new = load_warm(settings, str(tiny_model_path), predictor.cap)
    assert max(new.buckets) == 3 and max(new.warmed) == 3  # batch sizes that ran out of memory are not tried
    predictor.cap = 2  # lowered again before the swap lands
    predictor.swap(new)
    predictor.launch([bytes(32 * 32 * 3)])
    assert predictor.model is new and max(new.buckets) == 2
