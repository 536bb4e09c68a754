"""The worker's metrics record only what happened: a failed job's stages that it never ran are not observed."""

from __future__ import annotations

import pytest

from producer.wire.results import make_result

pytest.importorskip("prometheus_client", reason="the metrics extra")


def stage_count(metrics, stage: str) -> float:
    return metrics.registry.get_sample_value("adclassify_stage_duration_seconds_count", {"stage": stage}) or 0.0


def test_failed_jobs_observe_only_the_stages_they_ran_and_long_waits_fall_in_a_bucket():
    from worker.metrics import LATENCY_BUCKETS_S, Metrics

    metrics = Metrics("cpu")
    timings = {"queue": 120_000.0, "decode": 900.0, "infer": 0.0, "total": 120_000.0}  # the fetch's time as decode
    fetch_failed = make_result(
        "a", model="m@1", worker="w", timings_ms=timings, meta={}, error={"type": "fetch_error", "message": "down"}
    )
    ok = make_result(
        "b", model="m@1", worker="w", timings_ms={**timings, "decode": 5.0, "infer": 8.0}, meta={}, topk=[("x", 1.0)]
    )
    metrics.observe_batch([fetch_failed, ok], publish_s=0.001)
    assert (stage_count(metrics, "queue"), stage_count(metrics, "decode"), stage_count(metrics, "infer")) == (2, 1, 1)
    assert max(LATENCY_BUCKETS_S) >= 600  # a two-minute wait is measured, not just "over 30 s"
    le = {"stage": "queue", "le": "120.0"}
    assert metrics.registry.get_sample_value("adclassify_stage_duration_seconds_bucket", le) == 2.0
