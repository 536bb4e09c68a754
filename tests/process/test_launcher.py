"""The per-device launcher on CPU: two supervised workers, a crashed one restarted, SIGTERM stops all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import Worker

from bench.devserver import free_port
from producer import Producer
from worker.launcher import parse_devices

from ..conftest import ROOT, image_bytes, wait_for


def samples(port: int, name: str) -> list:
    """The samples named ``name`` on the launcher's merged metrics page at ``port``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def finished_by_process(port: int) -> dict[str, float]:
    """``adclassify_jobs_total{outcome="ok"}`` per worker process."""
    return {s.labels["process"]: s.value for s in samples(port, "adclassify_jobs_total") if s.labels["outcome"] == "ok"}


def served_by_process(port: int) -> dict[str, str]:
    """``adclassify_model_info``'s tag per worker process."""
    return {s.labels["process"]: s.labels["tag"] for s in samples(port, "adclassify_model_info")}


def restarts_by_process(port: int) -> dict[str, float]:
    return {s.labels["process"]: s.value for s in samples(port, "adclassify_worker_restarts_total")}


def free_range(count: int) -> int:
    """A port P with P .. P + count - 1 all free now (the launcher's page and its children's)."""
    for _ in range(50):
        base = free_port()
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free range of ports")


def test_device_specs():
    assert parse_devices("cpu:2") == ["cpu", "cpu"]
    assert parse_devices("0,1,3") == ["cuda:0", "cuda:1", "cuda:3"]
    with pytest.raises(SystemExit, match="cpu:N"):
        parse_devices("gpus please")


def test_all_without_a_gpu_says_so(tiny_model_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "--model",
            str(tiny_model_path),
            "--devices",
            "all",
            "--redis-url",
            f"redis://127.0.0.1:{free_port()}/0",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "no NVIDIA GPU" in proc.stderr and "cpu:N" in proc.stderr


def test_two_cpu_workers_restart_and_stop_together(redis_url, conn, tiny_model_path):
    args = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        str(tiny_model_path),
        "--redis-url",
        redis_url,
        "--devices",
        "cpu:2",
        "--idle-wait-ms",
        "200",
        "--metrics-port",
        str(port := free_range(3)),
    ]
    launcher = subprocess.Popen(args, cwd=ROOT)
    try:
        wait_for(lambda: len(Worker.all(connection=conn)) == 2, 120)
        names = {w.name for w in Worker.all(connection=conn)}
        assert all(n.split(":")[1] == "cpu" for n in names)
        victim_name = sorted(names)[0]
        os.kill(int(victim_name.rsplit(":", 1)[1].split("-")[0]), signal.SIGKILL)  # host:cpu:pid-token
        wait_for(lambda: {w.name for w in Worker.all(connection=conn)} - names, 120)  # a new worker took its place
        assert Producer(redis_url).classify(image_bytes("cat.jpg"), timeout=60)["ok"]
        assert sorted(restarts_by_process(port).values()) == [0, 1]  # the crash is visible on the pod's page
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=90) == 0
        # every child unregistered on its way out (the SIGKILLed one's key just expires)
        assert {w.name for w in Worker.all(connection=conn)} <= {victim_name}
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_workers_per_device_starts_k_distinct_workers_that_share_the_queue(redis_url, conn, tiny_model_path):
    args = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        str(tiny_model_path),
        "--redis-url",
        redis_url,
        "--workers-per-device",
        "2",
        "--idle-wait-ms",
        "200",
        "--batch-size",
        "4",
        "--metrics-port",
        str(port := free_range(3)),
    ]
    launcher = subprocess.Popen(args, cwd=ROOT)
    try:
        wait_for(lambda: len(Worker.all(connection=conn)) == 2, 120)
        assert len({w.name for w in Worker.all(connection=conn)}) == 2
        producer = Producer(redis_url)
        ids = producer.enqueue_many([image_bytes("cat.jpg")] * 40)
        results = [producer.result(job_id, timeout=60) for job_id in ids]
        assert all(r["ok"] for r in results)
        # one scrape target for the pod: both children's series on the launcher's port, labelled by process
        wait_for(lambda: sum(finished_by_process(port).values()) == 40)
        assert served_by_process(port) == {"0": "tiny@7", "1": "tiny@7"}
    finally:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0


def test_burst_workers_per_device_drain_the_queue_and_the_launcher_exits(redis_url, tiny_model_path):
    producer = Producer(redis_url)
    ids = producer.enqueue_many([image_bytes("cat.jpg")] * 24)
    args = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        str(tiny_model_path),
        "--redis-url",
        redis_url,
        "--workers-per-device",
        "2",
        "--burst",
        "--batch-size",
        "4",
    ]
    done = subprocess.run(args, cwd=ROOT, timeout=180, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(producer.result(job_id, timeout=5)["ok"] for job_id in ids)


def test_a_sighup_forwarded_to_a_child_still_starting_does_not_end_it(redis_url, conn, tiny_model_path):
    from worker.config import WorkerSettings
    from worker.launcher import Launcher

    settings = WorkerSettings(model=str(tiny_model_path), redis_url=redis_url, devices="cpu:1", idle_wait_ms=200)
    launcher = Launcher(settings, ["cpu"])
    launcher._start(0)  # what run() does at start and at every restart
    launcher.forward(signal.SIGHUP)  # a deploy's reload at that moment, before the child's handler exists
    child = launcher.procs[0]
    try:
        assert wait_for(lambda: len(Worker.all(connection=conn)) == 1 or not child.is_alive(), 120)
        assert child.is_alive(), f"the child ended: exit code {child.exitcode}"
    finally:
        launcher._stop_children()
    assert child.exitcode == 0


def test_burst_children_whose_set_up_fails_end_the_launcher_with_their_status(redis_url, tmp_path):
    """A batch job (--burst) with a model that won't load must end, failed: restarting the children with back-off
    for ever kept a Kubernetes Job or a CI step running."""
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    args = [sys.executable, "-m", "worker", "--model", str(broken), "--redis-url", redis_url,
            "--workers-per-device", "2", "--burst"]  # fmt: skip
    done = subprocess.run(args, cwd=ROOT, timeout=180, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("not restarted in --burst") == 2


def ignore_sigterm(ready) -> None:
    """A wedged child: deaf to SIGTERM (spawned by the test below; module level so spawn can import it)."""
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(120)


def test_a_child_deaf_to_sigterm_is_killed_once_the_shutdown_timeout_has_passed(tiny_model_path, monkeypatch):
    """Each child's joins used to wait 60 s in turn (K wedged children: K minutes), and the launcher's exit waited on
    any child still running: past a pod's grace period, and for ever where nobody sends SIGKILL."""
    import multiprocessing

    from worker.config import WorkerSettings
    from worker.launcher import Launcher

    monkeypatch.setattr("worker.launcher.STOP_MARGIN_S", 0.5)
    launcher = Launcher(WorkerSettings(model=str(tiny_model_path), shutdown_timeout_s=0.5), ["cpu"])
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    wedged = context.Process(target=ignore_sigterm, args=(ready,), daemon=True)
    wedged.start()
    assert ready.wait(60)
    launcher.procs[0] = wedged
    assert launcher._stop_children() == 0
    assert not wedged.is_alive() and wedged.exitcode == -signal.SIGKILL
