"""The producer's Prometheus metrics, for the web backend's own ``/metrics`` (with ``prometheus-client``
installed, the ``metrics`` extra; without it nothing is recorded).

Result-cache hits never reach a worker (``enqueue(..., cache=True)`` answers them in the web backend), so
the cache's hit rate is the producer's to export: ``adclassify_producer_cache_lookups_total{outcome}``,
``hit`` or ``miss``, in prometheus-client's default registry, which a web framework's exporter serves.
"""

from __future__ import annotations

from typing import Any

_LOOKUPS: Any = None  # the counter, once made; False when prometheus-client is not installed


def cache_lookup(hit: bool) -> None:
    """Count one result-cache lookup of this process."""
    global _LOOKUPS
    if _LOOKUPS is None:
        try:
            from prometheus_client import Counter
        except ImportError:
            _LOOKUPS = False
        else:
            _LOOKUPS = Counter(
                "adclassify_producer_cache_lookups_total",
                "Result-cache lookups of enqueue(..., cache=True), by outcome: hit (answered without a job) or miss",
                ["outcome"],
            )
    if _LOOKUPS:
        _LOOKUPS.labels("hit" if hit else "miss").inc()
