"""Client side of the classify queue: what a web backend imports (no torch).

Names are imported on first use, so ``import producer.wire`` (the worker's only import from here)
loads neither redis nor rq.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AsyncProducer": ".aio",
    "CancelOutcome": ".cancel",
    "CannotCancel": ".errors",
    "Producer": ".client",
    "JobOptions": ".jobdata",
    "Subscription": ".channel",
    "JobFailed": ".errors",
    "JobNotFound": ".errors",
    "JobTimeout": ".errors",
    "ProducerError": ".errors",
    "QueueFull": ".errors",
    "RedisFull": ".errors",
    "NotReplicated": ".errors",
    "ShardRefused": ".errors",
    "ShardUnavailable": ".errors",
    "ImageRef": ".wire.jobs",
    "ImageTooLarge": ".wire.jobs",
    "MsgpackSerializer": ".wire.serializer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'producer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
