"""Client side of the classify queue: what a web backend imports (no torch)."""

from .client import JobOptions, Producer, Subscription
from .errors import JobFailed, JobTimeout, ProducerError, QueueFull, RedisFull
from .protocol import ImageRef
from .serializer import MsgpackSerializer

__all__ = [
    "ImageRef", "JobFailed", "JobOptions", "JobTimeout", "MsgpackSerializer", "Producer", "ProducerError", "QueueFull",
    "RedisFull", "Subscription",
]  # fmt: skip
