"""Capped exponential back-off: the one retry delay of the worker (store calls, start-up, child restarts)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_BACKOFF_S = 30.0


@dataclass
class Backoff:
    """Delays that double from ``initial_s`` up to ``max_s``; ``reset()`` after a success.

    >>> b = Backoff(0.5, max_s=2.0)
    >>> [b.next() for _ in range(4)]
    [0.5, 1.0, 2.0, 2.0]
    """

    initial_s: float = 0.5
    max_s: float = MAX_BACKOFF_S
    current_s: float = 0.0

    def next(self) -> float:
        """The delay to wait now; the following one doubles (capped)."""
        self.current_s = self.initial_s if not self.current_s else min(self.current_s * 2, self.max_s)
        return self.current_s

    def peek(self) -> float:
        """The delay ``next()`` would return, without advancing."""
        return self.initial_s if not self.current_s else min(self.current_s * 2, self.max_s)

    def reset(self) -> None:
        """Start again from ``initial_s`` (the call succeeded)."""
        self.current_s = 0.0
