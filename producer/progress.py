"""Progress of a long run on stderr: a bar redrawn in place on a terminal, else a plain line now and then;
both with the rate and the time left (ETA) at this run's pace."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def duration_text(seconds: float) -> str:
    """``4:05`` or ``1:02:03``; ``?`` when unknown."""
    if seconds != seconds or seconds == float("inf") or seconds < 0:  # NaN, no pace yet
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """``done`` of ``total`` with ok and failed counts; the rate counts only what this run did (``start_done``
    were done before it started). On a terminal the bar is redrawn at most every 0.1 s; elsewhere one plain
    line every ``every_s``. ``close()`` draws the last state."""

    def __init__(
        self,
        total: int,
        start_done: int = 0,
        *,
        stream: TextIO | None = None,
        every_s: float = 5.0,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.start_done, self.width, self.clock = total, start_done, width, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = 0.1 if self.tty else every_s
        self.started = clock()
        self.shown_at = float("-inf")
        self.done, self.ok, self.failed = start_done, 0, 0

    def update(self, done: int, ok: int, failed: int) -> None:
        """The new counts; drawn if it is time."""
        self.done, self.ok, self.failed = done, ok, failed
        if self.clock() - self.shown_at >= self.every_s:
            self._show()

    def note(self, message: str) -> None:
        """A line of its own (on a terminal: above the bar, which is drawn again under it)."""
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(message + "\n")
        self.stream.flush()
        if self.tty and self.shown_at > float("-inf"):
            self._show()

    def rate(self) -> float:
        """Lines answered per second by this run."""
        return (self.done - self.start_done) / max(1e-9, self.clock() - self.started)

    def line(self) -> str:
        """The counts, the rate and the time left, as one line."""
        rate = self.rate()
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (
            f"{self.done}/{self.total} ok {self.ok} failed {self.failed} {rate:.1f} images/s ETA {duration_text(left)}"
        )

    def _show(self) -> None:
        self.shown_at = self.clock()
        if self.tty:
            filled = self.width * self.done // max(1, self.total)
            self.stream.write(f"\r\033[K[{'#' * filled}{'.' * (self.width - filled)}] {self.line()}")
        else:
            self.stream.write(f"progress: {self.line()}\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state (and end the bar's line on a terminal)."""
        self._show()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
