"""Prometheus metrics scraped from a real worker during a run."""

from __future__ import annotations

import contextlib
import re
import urllib.request

from bench.devserver import free_port
from producer import JobFailed, Producer

from ..conftest import image_bytes, wait_for, wait_for_workers


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def test_metrics_endpoint_counts_jobs_batches_and_stages(redis_url, conn, start_worker):
    port = free_port()
    start_worker("--metrics-port", str(port), "--batch-size", "8", "--worker-ttl-s", "3")
    wait_for_workers(conn)
    producer = Producer(redis_url)
    conn.xgroup_create("classify:results:stream", "dashboard", id="0", mkstream=True)  # a group that reads nothing
    conn.rpush("rq:queue:classify", b"\xc3\x28")  # an id that is not UTF-8: dropped, counted, logged
    ids = producer.enqueue_many([image_bytes("cat.jpg")] * 3 + [b"not an image"])
    for job_id in ids[:3]:
        assert producer.result(job_id, timeout=60)["ok"]
    with contextlib.suppress(JobFailed):
        producer.result(ids[3], timeout=60)

    def scraped_all() -> str | None:
        text = scrape(port)
        return text if 'adclassify_jobs_total{outcome="ok"} 3.0' in text else None

    text = wait_for(scraped_all, 30)
    assert 'adclassify_jobs_total{outcome="unsupported_image"} 1.0' in text
    assert value(text, "adclassify_batch_size_count") >= 1 and value(text, "adclassify_batch_size_sum") == 4
    for stage, jobs in (("queue", 4), ("decode", 4), ("infer", 3), ("publish", 4)):  # the failed one ran no pass
        assert value(text, f'adclassify_stage_duration_seconds_count{{stage="{stage}"}}') == jobs
    assert value(text, "adclassify_job_duration_seconds_count") == 4
    assert value(text, "adclassify_model_warmup_seconds") > 0
    assert "adclassify_queue_backlog_jobs" in text
    assert wait_for(lambda: value(scrape(port), "adclassify_dropped_ids_total") == 1, 30)
    if int(conn.info("server")["redis_version"].split(".")[0]) >= 7:  # 6.2 reports no lag
        lag = 'adclassify_results_feed_lag_entries{group="dashboard"}'
        assert wait_for(lambda: value(scrape(port), lag) == 4, 30)  # 4 final results, none read
    assert probe_ok(port)


def probe_ok(port: int) -> bool:
    """The probes share the metrics port."""
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            if response.status != 200:
                return False
    return True
