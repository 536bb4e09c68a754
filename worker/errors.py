"""Per-job failures: each has a ``kind`` (the result's ``error.type``) and whether a retry can help."""

from __future__ import annotations


class JobError(Exception):
    """A job that cannot be completed; ``str()`` is ``"<kind>: <message>"``."""

    def __init__(self, kind: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.retryable = retryable

    def as_error(self) -> dict[str, str]:
        """The result's ``error`` member."""
        return {"type": self.kind, "message": self.message}
