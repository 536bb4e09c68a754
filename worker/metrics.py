"""Prometheus metrics (``--metrics-port``; needs ``prometheus-client``, the ``metrics`` extra).

Names follow Prometheus conventions (``adclassify_`` prefix, base units, ``_total`` for counters);
docs/metrics.md lists them. Without ``--metrics-port`` nothing is imported and nothing is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# up to 10 minutes: a backfill's or a low-priority queue's jobs wait minutes (past the last bucket, p99 reads 30 s)
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
FETCHED = frozenset({"forbidden_url", "fetch_failed", "fetch_error"})  # failed before any decode: a fetch's time
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The worker's metrics, in ``registry``; ``worker.health.ProbeServer`` serves them at ``/metrics``."""

    def __init__(self, device: str) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self.device = device
        self._declare_jobs()
        self._declare_state()

    def _declare_jobs(self) -> None:
        """What jobs and batches did."""
        from prometheus_client import Counter, Histogram

        registry = self.registry
        self.jobs = Counter(
            "adclassify_jobs_total", "Jobs finished, by outcome (ok, or the error type)", ["outcome"], registry=registry
        )
        self.batch_size = Histogram("adclassify_batch_size", "Jobs per batch", buckets=BATCH_BUCKETS, registry=registry)
        self.stage = Histogram(
            "adclassify_stage_duration_seconds",
            "Per job: queue wait, decode, infer (its batch's forward pass), publish",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.end_to_end = Histogram(
            "adclassify_job_duration_seconds", "Enqueue to result written", buckets=LATENCY_BUCKETS_S, registry=registry
        )
        self.dropped = Counter(
            "adclassify_dropped_ids_total",
            "Queued ids dropped unstarted: not UTF-8, so no client can name them",
            registry=registry,
        )
        self.store_errors = Counter(
            "adclassify_store_errors_total",
            "Redis calls refused, by kind: full (maxmemory reached) or unavailable",
            ["kind"],
            registry=registry,
        )
        self.wrong_types = Counter(
            "adclassify_wrong_type_keys_total",
            "Times a script found a Redis key of the wrong type, by key (keys named after an id: their pattern)",
            ["key"],
            registry=registry,
        )
        self.duplicates = Counter(
            "adclassify_batch_duplicates_total",
            "Photos that came again within their batch and were run once (repeated ads)",
            registry=registry,
        )

    def _declare_state(self) -> None:
        """The queue, the device and the model as this worker sees them."""
        from prometheus_client import Counter, Gauge

        registry = self.registry
        self.backlog = Gauge("adclassify_queue_backlog_jobs", "Jobs waiting in the queue", registry=registry)
        self.warm_up = Gauge(
            "adclassify_model_warmup_seconds", "Model load and warm-up time at start", registry=registry
        )
        self.gpu_memory = Gauge(
            "adclassify_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated on the device", registry=registry
        )
        self.feed_lag = Gauge(
            "adclassify_results_feed_lag_entries",
            "Entries of the durable results feed not yet read, by consumer group (Redis >= 7)",
            ["group"],
            registry=registry,
        )
        self.reloads = Counter(
            "adclassify_model_reloads_total",
            "Model reloads (SIGHUP, --model-watch-s), by outcome: swapped, or refused (the old model keeps serving)",
            ["outcome"],
            registry=registry,
        )
        self.model = Gauge(
            "adclassify_model_info",
            "The model this worker serves: 1 for its name@version tag",
            ["tag"],
            registry=registry,
        )

    def serving(self, tag: str) -> None:
        """The model now served is ``tag`` (at start, and after a swap)."""
        self.model.clear()
        self.model.labels(tag).set(1)

    def observe_batch(self, results: Iterable[dict[str, Any]], publish_s: float) -> None:
        """Record one finished batch from its result maps."""
        results = list(results)
        self.batch_size.observe(len(results))
        for result in results:
            self.jobs.labels("ok" if result["ok"] else result["error"]["type"]).inc()
            timings = result["timings_ms"]
            # a failed job reached no forward pass (its infer is 0), and one failed at a fetch no decode: only the
            # stages a job ran, or a CDN outage would pull the decode and inference percentiles towards 0
            error = (result.get("error") or {}).get("type")
            stages = (
                ("queue", "decode", "infer")
                if result["ok"]
                else ("queue",)
                if error in FETCHED
                else ("queue", "decode")
            )
            for stage in stages:
                self.stage.labels(stage).observe(timings[stage] / 1000)
            self.stage.labels("publish").observe(publish_s)
            self.end_to_end.observe(timings["total"] / 1000 + publish_s)
        if self.device.startswith("cuda"):
            import torch

            self.gpu_memory.set(torch.cuda.memory_allocated(self.device))
