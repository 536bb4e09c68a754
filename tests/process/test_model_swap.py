"""New model versions without dropping a job: SIGHUP (or --model-watch-s) after a symlink flip, under load."""

from __future__ import annotations

import os
import signal
import threading
import urllib.request
from pathlib import Path

import pytest

from bench.devserver import free_port
from producer import Producer
from producer.status import gather, render
from producer.wire import keys
from producer.wire.cache import parse_announcement
from worker.decode.cpu import Preprocess

from ..conftest import image_bytes, wait_for, wait_for_workers
from ..tinymodels import TINY_CLASSES, TINY_SIZE


@pytest.fixture(scope="module")
def version_8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model again, as version 8 (same preprocessing: a swap keeps the decodes in flight valid)."""
    from worker.export import ExportSpec, export

    out = tmp_path_factory.mktemp("v8") / "tiny-v8.pt"
    labels = tuple(f"class{i}" for i in range(TINY_CLASSES))
    pre = Preprocess(size=TINY_SIZE, resize="stretch")
    export(ExportSpec(factory="tests.tinymodels:tiny_cnn", out=out, name="tiny", version="8", preprocess=pre,
                      labels=labels))  # fmt: skip
    return out


@pytest.fixture
def current(tmp_path: Path, tiny_model_path: Path) -> Path:
    """``current.pt``: the symlink a deploy flips; first to version 7."""
    link = tmp_path / "current.pt"
    link.symlink_to(tiny_model_path)
    return link


def flip(link: Path, target: Path) -> None:
    tmp = link.with_suffix(".new")
    tmp.symlink_to(target)
    os.replace(tmp, link)  # atomic, as a deploy does


def metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def served(conn) -> list[str]:
    """The model tag each worker says it serves (``producer status``)."""
    return [w["model"] for w in gather(conn, "classify")["workers"]]


def announced_tag(conn) -> str | None:
    announced = parse_announcement(conn.get(keys.announcement("classify")))
    return announced["tag"] if announced else None


def test_a_sighup_swaps_the_model_under_load_with_no_job_lost_or_failed(
    redis_url, conn, start_worker, current, version_8
):
    worker = start_worker("--model", str(current), "--batch-size", "4", "--worker-ttl-s", "60")
    wait_for_workers(conn)
    producer, ids, stop = Producer(redis_url), [], threading.Event()

    def stream() -> None:
        while not stop.is_set():
            ids.extend(producer.enqueue_many([image_bytes("cat.jpg")] * 4))
            stop.wait(0.02)

    feeder = threading.Thread(target=stream, daemon=True)
    feeder.start()
    wait_for(lambda: len(ids) >= 40, 30)
    flip(current, version_8)
    worker.send_signal(signal.SIGHUP)
    wait_for(lambda: announced_tag(conn) == "tiny@8", 60)
    after_swap = len(ids)
    wait_for(lambda: len(ids) >= after_swap + 40, 30)
    stop.set()
    feeder.join(10)
    results = [producer.result(job_id, timeout=60) for job_id in ids]
    assert all(r["ok"] for r in results)
    tags = [r["model"] for r in results]
    assert set(tags) <= {"tiny@7", "tiny@8"} and tags[0] == "tiny@7"
    assert set(tags[after_swap + 8 :]) == {"tiny@8"}  # enqueued after the announcement: the new version
    assert worker.poll() is None


def test_a_model_that_fails_to_load_is_refused_and_the_old_one_keeps_serving(
    redis_url, conn, start_worker, current, tmp_path
):
    port = free_port()
    worker = start_worker("--model", str(current), "--batch-size", "4", "--metrics-port", str(port))
    wait_for_workers(conn)
    producer = Producer(redis_url)
    assert producer.classify(image_bytes("cat.jpg"), timeout=60)["model"] == "tiny@7"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model at all")
    flip(current, broken)
    worker.send_signal(signal.SIGHUP)
    for _ in range(3):  # the refusal happens in the background: the old model answers throughout
        assert producer.classify(image_bytes("cat.jpg"), timeout=60)["model"] == "tiny@7"
    assert wait_for(lambda: 'adclassify_model_reloads_total{outcome="refused"} 1.0' in metrics(port), 30)
    assert 'adclassify_model_info{tag="tiny@7"} 1.0' in metrics(port)
    assert announced_tag(conn) == "tiny@7" and served(conn) == ["tiny@7"] and worker.poll() is None


def test_model_watch_follows_a_symlink_flip_without_a_signal(redis_url, conn, start_worker, current, version_8):
    port = free_port()
    start_worker("--model", str(current), "--batch-size", "4", "--model-watch-s", "0.5", "--metrics-port", str(port))
    start_worker("--batch-size", "4")  # not swapped: a rolling update half done
    wait_for_workers(conn, 2)
    producer = Producer(redis_url)
    assert producer.classify(image_bytes("cat.jpg"), timeout=60)["model"] == "tiny@7"
    assert served(conn) == ["tiny@7", "tiny@7"] and 'adclassify_model_info{tag="tiny@7"} 1.0' in metrics(port)
    flip(current, version_8)
    wait_for(lambda: announced_tag(conn) == "tiny@8", 60)
    assert wait_for(lambda: sorted(served(conn)) == ["tiny@7", "tiny@8"], 30)  # at the swapped worker's next beat
    assert "models: tiny@7 (1 workers), tiny@8 (1 workers)" in render(gather(conn, "classify"))
    text = metrics(port)
    assert 'adclassify_model_info{tag="tiny@8"} 1.0' in text and 'tag="tiny@7"' not in text
    assert 'adclassify_model_reloads_total{outcome="swapped"} 1.0' in text


def run_in_process(monkeypatch, settings, after_load=lambda: None):
    """``worker.service.run`` on a thread (real Redis, real pipeline); its first model watched through a weak
    reference, ``after_load`` called once that model is loaded (a deploy acting while the worker starts)."""
    import weakref

    from worker import service

    real, first = service.prepare_model, {}

    def prepare(s):
        model, s = real(s)
        first["model"] = weakref.ref(model)
        after_load()
        return model, s

    monkeypatch.setattr(service, "prepare_model", prepare)
    stop, hup = threading.Event(), threading.Event()
    thread = threading.Thread(target=service.run, args=(settings, stop, hup), daemon=True)
    thread.start()
    return first, stop, hup, thread


def settings_for(redis_url: str, model: Path, **extra):
    from worker.config import WorkerSettings

    return WorkerSettings(model=str(model), redis_url=redis_url, batch_size=4, precision="fp32", decode="cpu",
                          decode_threads=1, torch_threads=1, **extra)  # fmt: skip


def test_after_a_swap_the_first_model_is_freed(monkeypatch, redis_url, conn, current, version_8):
    import gc

    first, stop, hup, thread = run_in_process(monkeypatch, settings_for(redis_url, current))
    try:
        wait_for_workers(conn)
        producer = Producer(redis_url)
        assert producer.classify(image_bytes("cat.jpg"), timeout=60)["model"] == "tiny@7"
        flip(current, version_8)
        hup.set()  # what SIGHUP does
        assert wait_for(lambda: producer.classify(image_bytes("cat.jpg"), timeout=60)["model"] == "tiny@8", 60)
        gc.collect()
        assert first["model"]() is None  # its memory (device memory on a GPU) is not held twice for good
    finally:
        stop.set()
        thread.join(30)


def test_a_flip_made_while_the_worker_starts_is_followed(monkeypatch, redis_url, conn, current, version_8):
    settings = settings_for(redis_url, current, model_watch_s=0.2)
    _, stop, _, thread = run_in_process(monkeypatch, settings, after_load=lambda: flip(current, version_8))
    try:
        wait_for_workers(conn)
        assert wait_for(lambda: announced_tag(conn) == "tiny@8", 60)  # loaded 7; the flip to 8 is seen
        assert Producer(redis_url).classify(image_bytes("cat.jpg"), timeout=60)["model"] == "tiny@8"
    finally:
        stop.set()
        thread.join(30)


def test_the_launchers_sighup_swaps_k_children_that_share_a_reload_lock(
    redis_url, conn, start_worker, current, version_8, tmp_path
):
    launcher = start_worker("--model", str(current), "--workers-per-device", "2", "--batch-size", "4",
                            env={"TMPDIR": str(tmp_path)})  # fmt: skip
    wait_for_workers(conn, 2)
    (lock,) = tmp_path.glob("adclassify-*/cpu.reload.lock")  # opened by the children: they reload in turn
    assert served(conn) == ["tiny@7", "tiny@7"]
    flip(current, version_8)
    launcher.send_signal(signal.SIGHUP)
    assert wait_for(lambda: served(conn) == ["tiny@8", "tiny@8"], 60)  # each child, one after the other
    assert Producer(redis_url).classify(image_bytes("cat.jpg"), timeout=60)["model"] == "tiny@8"
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) == 0
    assert not lock.parent.exists()


def test_a_stopped_worker_leaves_no_reloader_or_watchdog_thread_behind(monkeypatch, redis_url, conn, current):
    """Threads still running when the interpreter finalises are killed mid-call (pthread_exit): a reloader
    thread woken by the stop aborted the process at exit now and then (exit -6, 'terminate called')."""
    from worker import service

    made: list[threading.Thread] = []
    for module, name in ((service, "Reloader"), (service, "Watchdog")):
        real = getattr(module, name)
        monkeypatch.setattr(
            module, name, type(name, (real,), {"start": lambda self, real=real: (made.append(self), real.start(self))})
        )
    _, stop, _, thread = run_in_process(monkeypatch, settings_for(redis_url, current))
    wait_for_workers(conn)
    stop.set()
    thread.join(30)
    assert not thread.is_alive() and len(made) == 2
    assert [t.name for t in made if t.is_alive()] == []  # joined before run() returned
