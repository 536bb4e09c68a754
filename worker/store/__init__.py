"""The queue store: the only place that knows where jobs wait and how their ends are recorded."""

from .base import JobRecord, Outcome, QueueStore, StoreFull, StoreUnavailable, WorkerStats

__all__ = ["JobRecord", "Outcome", "QueueStore", "StoreFull", "StoreUnavailable", "WorkerStats"]
