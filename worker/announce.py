"""What a worker tells others about the model it serves: the announcement producers' cache lookups read,
the worker hash's tag (``producer status``) and the metrics (``adclassify_model_info``, reloads)."""

from __future__ import annotations

import logging
import time
from typing import Any

from .config import WorkerSettings
from .health import Health
from .metrics import Metrics
from .store import QueueStore, StoreUnavailable

log = logging.getLogger("worker.service")


def announce_model(store: QueueStore, settings: WorkerSettings, tag: str, decode: str) -> None:
    """Tell producers what this worker now runs (the result cache's key has the tag: no version is answered
    from another's entry)."""
    try:
        store.announce(announcement(settings, tag, decode))
    except StoreUnavailable as exc:  # the next registration announces it
        log.warning("could not announce model %s yet: %s", tag, exc)


def swapped(tag: str, store: QueueStore, settings: WorkerSettings, decode: str, metrics: Metrics | None) -> None:
    """A new model serves from the next batch: say so to producers (cache lookups, ``producer status``) and
    in the metrics."""
    announce_model(store, settings, tag, decode)
    if metrics is not None:
        metrics.reloads.labels("swapped").inc()
        metrics.serving(tag)


def start_metrics(settings: WorkerSettings, health: Health, warm_up_s: float) -> Metrics | None:
    """Prometheus metrics when ``--metrics-port`` is set (served by the probes), else None."""
    if not settings.metrics_port:
        return None
    metrics = Metrics(settings.device)  # imports prometheus_client: only for a worker that exports metrics
    health.registry = metrics.registry
    metrics.warm_up.set(warm_up_s)
    return metrics


def announcement(settings: WorkerSettings, tag: str, decode: str) -> dict[str, Any]:
    """What this worker announces about the results it writes (the result cache's key parts and TTL), from now:
    ``since`` orders announcements (the store never lets an older model's replace a newer one's)."""
    return {
        "tag": tag,
        "precision": settings.precision,
        "decode": decode,
        "topk": settings.topk,
        "ttl_s": settings.cache_ttl_s,
        "since": time.time(),
    }
