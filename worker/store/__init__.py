"""The queue store: the only place that knows where jobs wait and how their ends are recorded."""

from .base import (
    JobRecord,
    Outcome,
    PartlyRecorded,
    QueueStore,
    StoreFull,
    StoreUnavailable,
    WorkerStats,
    WrongTypeKeys,
)
from .printable import shown

__all__ = [
    "JobRecord",
    "Outcome",
    "PartlyRecorded",
    "QueueStore",
    "StoreFull",
    "StoreUnavailable",
    "WorkerStats",
    "WrongTypeKeys",
    "shown",
]
