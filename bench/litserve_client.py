"""Start the LitServe app on a free port and drive it with a concurrent client: images/s per max_batch."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from producer.devserver import wait_until

from .common import ROOT, pythonpath


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: bytes) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"LitServe answered {response.status}: {data[:200]!r}")
        return json.loads(data)
    finally:
        conn.close()


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def measure(model: str, payloads: list[bytes], max_batch: int, device: str = "cpu", concurrency: int = 16) -> float:
    """Images/s of LitServe at ``max_batch``, ``concurrency`` requests in flight, after a warm-up round."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    cmd = [sys.executable, "-m", "bench.litserve_app", "--model", model, "--max-batch", str(max_batch),
           "--port", str(port), "--device", device]  # fmt: skip
    # Its own process group: LitServe spawns API and inference processes that must all go at the end.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        wait_until(lambda: _healthy(port) or proc.poll() is not None, 180, "LitServe to start", 0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"LitServe exited with {proc.returncode}")
        bodies = [json.dumps({"image": base64.b64encode(p).decode()}).encode() for p in payloads]
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda b: _post(port, b), bodies[: concurrency * 2]))  # warm-up
            start = time.perf_counter()
            results = list(pool.map(lambda b: _post(port, b), bodies))
            elapsed = time.perf_counter() - start
        assert all("label" in r for r in results)
        return len(bodies) / elapsed
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever outlived its parent."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
