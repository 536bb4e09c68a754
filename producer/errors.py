"""Exceptions a producer raises."""

from __future__ import annotations

from typing import Any


class ProducerError(Exception):
    """Base class of the producer's errors."""


class JobTimeout(ProducerError, TimeoutError):
    """No final result arrived for a job within the time asked for."""

    def __init__(self, job_id: str, timeout_s: float, detail: str = "") -> None:
        self.job_id = job_id
        self.timeout_s = timeout_s
        super().__init__(f"no result for job {job_id} within {timeout_s:g} s{detail}")


class JobFailed(ProducerError):
    """The job ended failed; ``error`` is ``{"type", "message"}`` and ``result`` the result map."""

    def __init__(self, job_id: str, error: dict[str, str], result: dict[str, Any] | None = None) -> None:
        self.job_id = job_id
        self.error = error
        self.result = result
        super().__init__(f"job {job_id} failed: {error.get('type')}: {error.get('message')}")


class QueueFull(ProducerError):
    """The queue holds ``length`` jobs; adding ``adding`` more would pass the producer's ``limit``."""

    def __init__(self, queue: str, length: int, adding: int, limit: int) -> None:
        self.queue, self.length, self.adding, self.limit = queue, length, adding, limit
        super().__init__(f"queue {queue!r} is full: {length} waiting + {adding} > limit {limit}; retry later")
