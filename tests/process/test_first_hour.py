"""What a new user meets in the first hour: options after the command, labels on a terminal, current
status counters, and one clear line (no traceback) for a Redis that is down or a model file that is missing."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

from bench.devserver import free_port
from producer.status import gather

from ..conftest import IMAGES, ROOT, wait_for, wait_for_workers


def on_a_terminal(args: list[str], timeout_s: float = 120.0) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal (as a user at a shell); return the exit code and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=timeout_s), b"".join(chunks).decode(errors="replace")


def test_push_takes_its_options_after_the_command_and_shows_top3_per_image_on_a_terminal(redis_url, conn, start_worker):
    start_worker("--batch-size", "4", "--worker-ttl-s", "60", "--name", "first-hour:cpu:1")
    wait_for_workers(conn)
    names = ["coffee.jpg", "cat.jpg", "flower.jpg", "rocket.jpg", "china.jpg"]
    code, out = on_a_terminal(
        [
            sys.executable,
            "-m",
            "producer",
            "push",
            "--redis-url",
            redis_url,
            "--queue",
            "classify",
            "--wait",
            *(str(IMAGES / n) for n in names),
        ]
    )
    assert code == 0, out
    lines = [line.split("\r")[-1].replace("\x1b[K", "") for line in out.splitlines()]
    for name in names:  # each image's own line with its top-3 labels, above the progress bar
        (line,) = [line for line in lines if line.startswith(name)]
        assert line.count("class") == 3, line
    assert "[##############################] 5/5" in out and "5 sent, 5 ok, 0 failed" in out

    def status() -> dict | None:  # what `python -m producer status --json` prints, read in-process (no start-up)
        (worker,) = gather(conn, "classify")["workers"]
        return worker if worker["batches"] >= 2 and worker["images_per_s_1m"] > 0 else None

    # right after the burst, not a heartbeat (60 s / 3, or 5 s between reaps) later
    worker = wait_for(status, timeout_s=4.0)
    assert worker["jobs_ok"] == 5 and worker["batches"] <= 5


def test_a_redis_that_is_down_is_one_line_and_a_non_zero_exit():
    down = f"redis://127.0.0.1:{free_port()}/0"
    for command in (["push", str(IMAGES / "cat.jpg")], ["status"], ["listen", "--count", "1"]):
        proc = subprocess.run(
            [sys.executable, "-m", "producer", *command, "--redis-url", down],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"python -m producer {command[0]}: cannot reach Redis" in proc.stderr
        assert "Connection refused" in proc.stderr


def test_a_missing_model_file_says_what_is_missing_and_how_to_build_it(tmp_path):
    missing = tmp_path / "models" / "efficientnet_lite0.pt"
    args = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        str(missing),
        "--redis-url",
        f"redis://127.0.0.1:{free_port()}/0",
    ]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert str(missing) in line and f"python -m worker export --demo --out {missing}" in line


def test_a_redis_url_that_is_not_one_is_one_line_and_exit_2(tiny_model_path):
    for url, hint in (
        ("http://localhost:6379/0", "got 'http://localhost:6379/0'"),
        ("localhost:6379", "try redis://localhost:6379"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "worker", "--model", str(tiny_model_path), "--redis-url", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--redis-url: a Redis URL must start with redis://" in lines[0] and hint in lines[0]


def test_a_file_that_is_not_a_model_is_one_line_and_exit_2(redis_url, tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"this is not a TorchScript file\n" * 10)
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--model", str(fake), "--redis-url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "not a TorchScript model file" in done.stderr


def test_credentials_redis_refuses_are_one_line_and_exit_2_before_the_model_loads(redis_url, tmp_path):
    """Redis is checked first: a wrong password is reported in about a second, not after the model's load
    (the model file here is not even read: it is garbage, and that would be exit 2 with another line)."""
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not read: redis is checked first\n")
    bad = redis_url.replace("redis://", "redis://nobody:wrong@")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--model", str(fake), "--redis-url", bad],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "refuses this worker" in done.stderr and "not a TorchScript" not in done.stderr
    assert ":wrong@" not in done.stderr and "nobody:***@" in done.stderr  # the password is masked in the line
    assert "Traceback" not in done.stderr and time.monotonic() - started < 30
