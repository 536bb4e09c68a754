"""LitServe benchmark client: start bench.litserve_app on a free port and drive it with concurrent clients.

Nothing here imports our ``worker`` or ``producer`` packages: requests are plain HTTP POSTs of
``{"image": base64}`` JSON, so LitServe is measured exactly as any other client would see it.
"""

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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from .common import ROOT, pythonpath


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LOCAL = threading.local()  # each client thread keeps its connection open (keep-alive), as an HTTP client would


def _post(port: int, body: bytes) -> dict:
    conn = getattr(_LOCAL, "conn", None)
    if conn is None or conn.port != port:
        conn = _LOCAL.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        _LOCAL.conn = None
        raise
    if response.status != 200:
        raise RuntimeError(f"LitServe answered {response.status}: {data[:200]!r}")
    return json.loads(data)


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@contextlib.contextmanager
def serve(
    model: str, max_batch: int, device: str = "cpu", start_timeout_s: float = 180, workers: int = 1
) -> Iterator[int]:
    """Run ``bench.litserve_app`` on a free port until the block ends; yields the port once /health answers."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    cmd = [
        sys.executable,
        "-m",
        "bench.litserve_app",
        "--model",
        str(model),
        "--max-batch",
        str(max_batch),
        "--port",
        str(port),
        "--device",
        device,
        "--workers",
        str(workers),
    ]
    # Its own process group: LitServe spawns API and inference processes that must all go at the end.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_until(lambda: _healthy(port) or proc.poll() is not None, start_timeout_s, "LitServe to start")
        if proc.poll() is not None:
            raise RuntimeError(f"LitServe exited with {proc.returncode}")
        yield port
    finally:
        _stop_group(proc)


def bodies(payloads: list[bytes]) -> list[bytes]:
    """The request bodies: ``{"image": base64}`` JSON, one per payload."""
    return [json.dumps({"image": base64.b64encode(p).decode()}).encode() for p in payloads]


def classify(port: int, requests: list[bytes], concurrency: int = 16) -> list[dict]:
    """POST every body with ``concurrency`` requests in flight; the answers, in request order."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda b: _post(port, b), requests))


def measure(
    model: str, payloads: list[bytes], max_batch: int, device: str = "cpu", concurrency: int = 16, workers: int = 1
) -> float:
    """Images/s of LitServe at ``max_batch`` (``workers`` inference processes), ``concurrency`` requests in flight,
    after a warm-up round; counted as ours is (``bench.drain``): the answers after the first, over the time from
    the first answer to the last."""
    requests = bodies(payloads)

    def answered(body: bytes) -> tuple[float, dict]:
        result = _post(port, body)
        return time.perf_counter(), result

    with serve(model, max_batch, device, workers=workers) as port, ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: _post(port, b), requests[: concurrency * 2]))  # warm-up
        timed = list(pool.map(answered, requests))
    bad = [r for _, r in timed if not isinstance(r.get("label"), str) or len(r.get("topk", ())) == 0]
    if bad:
        raise RuntimeError(f"LitServe answered {len(bad)} requests without a label, e.g. {bad[0]!r:.200}")
    times = sorted(t for t, _ in timed)
    return (len(times) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else float("nan")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever outlived its parent."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
