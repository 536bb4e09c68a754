"""The reloader's decisions (no Redis): what a refused reload retries, what a swap keeps from an out-of-memory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from worker.config import WorkerSettings
from worker.infer import Predictor
from worker.model import load_model
from worker.reload import Reloader, ReloadTurn, file_identity
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


def test_workers_sharing_a_reload_lock_load_a_new_version_one_at_a_time(link, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="worker.reload")
    lock, events, first_may_finish = str(tmp_path / "cuda0.reload.lock"), [], threading.Event()

    def reloader(name: str) -> Reloader:
        def load(path: str):
            events.append(f"{name} loads")
            if name == "a":
                assert first_may_finish.wait(20)
            return load_model(path, max_batch=2)

        predictor = Predictor(load_model(link, max_batch=2), cap=2)
        return Reloader(
            str(link), predictor, load, turn=ReloadTurn(lock), on_swap=lambda t: events.append(f"{name} swaps")
        )

    a, b = reloader("a"), reloader("b")
    try:
        a.start(), a.request()
        wait_for(lambda: events == ["a loads"])
        b.start(), b.request()  # the launcher's SIGHUP reaches both children at once
        wait_for(lambda: "waiting for another worker on this device" in caplog.text)
        assert events == ["a loads"]  # b holds no second spare copy while a loads
        first_may_finish.set()
        wait_for(lambda: b.swapped == 1)
        assert events == ["a loads", "a swaps", "b loads", "b swaps"]
    finally:
        first_may_finish.set()
        a.stop(), b.stop()


def test_a_reload_lock_held_by_a_process_that_died_is_free_again(link, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="worker.reload")
    lock = tmp_path / "cuda0.reload.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )  # a sibling killed mid-reload (the out-of-memory killer, a crash)
    try:
        assert holder.stdout.readline().strip() == "held"
        predictor = Predictor(load_model(link, max_batch=2), cap=2)
        reloader = Reloader(
            str(link), predictor, lambda path: load_model(path, max_batch=2), turn=ReloadTurn(str(lock))
        )
        reloader.start(), reloader.request()
        wait_for(lambda: "waiting for another worker on this device" in caplog.text)
        assert reloader.swapped == 0
        holder.kill()
        wait_for(lambda: reloader.swapped == 1)
    finally:
        holder.kill()
        holder.wait(10)
        reloader.stop()


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_a_turn_not_given_back_in_time_is_not_waited_for_forever(tmp_path):
    path = str(tmp_path / "l")
    first, second = ReloadTurn(path), ReloadTurn(path)
    never = threading.Event()
    assert first.take(never)
    assert second.take(never, max_wait_s=0.2)  # a hung sibling: go on, logged
    assert not second.held
    stopping = threading.Event()
    stopping.set()
    assert not ReloadTurn(path).take(stopping, max_wait_s=30)  # a stop ends the wait
    first.give()
    assert second.take(never) and second.held
    first.close(), second.close()


def test_an_idle_worker_runs_the_new_version_at_once_and_lets_the_old_one_go(link):
    """Before the turn passes to the next process on the device, the old version is out of the predictor and
    freed (on CUDA its blocks then go back to the device): an idle worker held both until its next batch."""
    import gc
    import weakref

    predictor = Predictor(load_model(link, max_batch=2), cap=2)
    old = weakref.ref(predictor.model)
    reloader = Reloader(str(link), predictor, lambda path: load_model(path, max_batch=2))
    assert reloader.reload()  # no batch runs meanwhile
    gc.collect()
    assert old() is None and predictor.model is not None
    assert predictor.launch([bytes(32 * 32 * 3)]).result()[0]  # and it runs


def test_a_swap_made_during_a_launch_is_taken_at_its_end(link):
    """Locks are not fair: a reloader waiting for a gap between back-to-back launches could lose every time. A
    launch that finds a swap pending at its end takes it, so the old version goes within one batch; the batch
    launched runs, and is named, on the version that started it."""
    import gc
    import weakref
    from contextlib import contextmanager

    from worker.decode.gate import NoGate

    new = load_model(link, max_batch=2)

    class SwapDuringForward(NoGate):
        @contextmanager
        def forward(self, images: int = 1):
            predictor.swap(new)  # the reloader, while this batch starts
            yield

    predictor = Predictor(load_model(link, max_batch=2), cap=2, gate=SwapDuringForward())
    old = weakref.ref(predictor.model)
    launched = predictor.launch([bytes(32 * 32 * 3)] * 2)
    assert predictor.model is new and launched.result()[0]
    gc.collect()
    assert old() is None


def with_entry(model: Path, out: Path, entry: str, content: str) -> Path:
    """A copy of the model file ``model`` with its ``<archive>/extra/<entry>`` replaced."""
    with zipfile.ZipFile(model) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, content if item.filename.endswith(f"/extra/{entry}") else src.read(item))
    return out


def test_a_new_input_size_is_refused_from_the_files_metadata_before_any_weight_loads(link, tmp_path, caplog):
    predictor = Predictor(load_model(link, max_batch=2), cap=2)
    preprocess = json.loads(zipfile.ZipFile(link).read("tiny/extra/preprocess.json"))
    bigger = with_entry(link, tmp_path / "big.pt", "preprocess.json", json.dumps({**preprocess, "size": [64, 64]}))
    loads: list[str] = []
    reloader = Reloader(str(link), predictor, lambda path: loads.append(path) or load_model(path, max_batch=2))
    flip(link, bigger)
    with caplog.at_level(logging.ERROR, logger="worker.reload"):
        assert not reloader.reload()
    assert loads == [] and reloader.refused == 1  # no copy of its weights was made on the device
    assert "preprocessing" in caplog.text and "restart the worker to change it" in caplog.text


def test_any_error_of_a_loader_is_a_refusal_and_the_reloader_thread_survives_its_hooks(link, caplog):
    predictor = Predictor(load_model(link, max_batch=2), cap=2)
    failures = [KeyError(), AssertionError()]  # what torch's loaders raise for some malformed archives: no message

    def load(path: str):
        if failures:
            raise failures.pop(0)
        return load_model(path, max_batch=2)

    hooks: list[str] = []

    def on_swap(tag: str) -> None:
        hooks.append(tag)
        if len(hooks) == 1:
            raise RuntimeError("a metrics hook's bug")

    with caplog.at_level(logging.ERROR, logger="worker.reload"):
        reloader = Reloader(str(link), predictor, load, on_swap=on_swap)
        assert not reloader.reload() and reloader.refused == 1 and "keeps serving: KeyError" in caplog.text
        reloader.start()
        try:
            reloader.request()  # AssertionError: refused
            assert wait_for(lambda: reloader.refused == 2)
            reloader.request()  # loads, swaps, and the hook raises: logged, the thread goes on
            assert wait_for(lambda: len(hooks) == 1)
            reloader.request()
            assert wait_for(lambda: len(hooks) == 2) and reloader.is_alive() and reloader.swapped == 2
        finally:
            reloader.stop()
            reloader.join(5)
    assert "a metrics hook's bug" in caplog.text


def test_a_same_size_rewrite_that_keeps_the_mtime_is_still_a_new_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"version 1")
    before, stat = file_identity(str(path)), path.stat()
    assert wait_for(lambda: time.time_ns() - stat.st_ctime_ns > 50_000_000)  # past the file clock's granularity
    with path.open("r+b") as f:  # rsync --inplace, or cp -p onto the file: same inode, size and mtime
        f.write(b"version 2")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    assert file_identity(str(path)) != before
