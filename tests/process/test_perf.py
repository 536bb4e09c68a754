"""Batch size by measurement, the five-practices report, and the overlapped loop's batching."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from producer import Producer
from worker.model import load_model
from worker.perf import Timing, autotune, choose_batch_size, time_buckets

from ..conftest import ROOT, image_bytes, wait_for_workers


def timings(*rates: float) -> list[Timing]:
    sizes = [2**i for i in range(len(rates))]
    return [Timing(b, b / r * 1000, r, 3) for b, r in zip(sizes, rates, strict=True)]


def test_choose_batch_size_takes_the_fastest():
    assert choose_batch_size(timings(34, 38, 40, 33, 23)) == 4
    assert choose_batch_size(timings(10, 20, 40, 80, 160)) == 16


def test_choose_batch_size_prefers_the_smaller_of_near_equals():
    assert choose_batch_size(timings(100, 150, 200, 201, 199)) == 4


def test_choose_batch_size_respects_the_latency_cap():
    t = timings(10, 20, 40, 80, 160)  # ms per batch: 100 at every size
    assert choose_batch_size(t, max_latency_ms=50) == 1  # none fits: the quickest batch
    t = [Timing(1, 5, 200, 3), Timing(2, 8, 250, 3), Timing(4, 30, 133, 3), Timing(8, 90, 89, 3)]
    assert choose_batch_size(t, max_latency_ms=20) == 2


def test_autotune_rebuckets_the_model(tiny_model_path):
    model = load_model(tiny_model_path, "cpu", 8)
    chosen, measured = autotune(model, 8)
    assert [t.batch for t in measured] == [1, 2, 4, 8]
    assert all(t.images_per_s > 0 and t.iters >= 3 for t in measured)
    assert model.buckets[-1] == chosen and chosen in (1, 2, 4, 8)
    assert time_buckets(model, [chosen], budget_s=0.01)[0].batch == chosen


def test_worker_with_auto_batch_size_serves_jobs(redis_url, conn, start_worker):
    proc = start_worker("--batch-size", "auto", "--max-batch-size", "4")
    wait_for_workers(conn)
    producer = Producer(redis_url)
    ids = producer.enqueue_many([image_bytes("cat.jpg")] * 6)
    results = [producer.result(i, timeout=60) for i in ids]
    assert all(r["ok"] for r in results) and {r["label"] for r in results} == {results[0]["label"]}
    assert all(1 <= r["batch"] <= 4 for r in results)
    assert proc.poll() is None


def test_a_prefilled_queue_is_served_in_batches_not_one_by_one(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    ids = producer.enqueue_many([image_bytes("coffee.jpg")] * 24)
    start_worker("--batch-size", "8", "--max-wait-ms", "50")
    results = [producer.result(i, timeout=60) for i in ids]
    assert all(r["ok"] for r in results)
    sizes = [r["batch"] for r in results]
    # the first batch is full (taken at once from a full queue by an idle model); later ones are what
    # was decoded by the time the model was free again (no extra wait when it is busy)
    assert max(sizes) == 8 and all(1 <= s <= 8 for s in sizes) and sum(sizes) / len(sizes) >= 2


@pytest.mark.parametrize("eager", [False, True])
def test_practices_report_cli(tiny_model_path, tmp_path, eager):
    out = tmp_path / "report.json"
    args = [
        sys.executable,
        "-m",
        "worker",
        "bench",
        "--model",
        str(tiny_model_path),
        "--max-batch",
        "4",
        "--budget-s",
        "0.05",
        "--json",
        str(out),
    ]
    if eager:
        args += ["--eager", "tests.tinymodels:tiny_cnn"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    practices = {(r["practice"], r["without"]) for r in report["practices"]}
    assert ("inference mode", "autograd on") in practices and ("batching", "batch 1") in practices
    assert ("cuDNN autotune", "benchmark=False") in practices and ("GPU vs CPU", "cpu") in practices
    assert (("TorchScript", "eager") in practices) == eager
    measured = [r for r in report["practices"] if r["gain"] is not None]
    assert all(r["gain"] > 0 for r in measured) and len(measured) >= 3
    assert [t["batch"] for t in report["sweep"]] == [1, 2, 4]
    assert "| inference mode | inference_mode | autograd on |" in proc.stdout
