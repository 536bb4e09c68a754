"""Signals acted on by a thread of their own, never inside a signal handler.

Python runs a signal's handler in the main thread, between two of its bytecodes: possibly while that thread
holds the lock inside a ``threading.Event`` it waits on or clears (``Condition.wait`` re-takes it before it
returns). A handler that then sets the same event waits for a lock its own thread holds: the process hangs
for good (a launcher that never stops its children, a worker that never drains). So the handlers here do
nothing; the C-level handler writes each signal's number to a pipe (``signal.set_wakeup_fd``) and a daemon
thread reads it and runs the action, with the locks of an ordinary thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _ignore(_signum: int, _frame: object) -> None:
    """The Python-level handler: the thread below does the work."""


class SignalThread(threading.Thread):
    """Runs ``actions[signum](signum)`` for each signal received, in order, on this thread."""

    def __init__(self, actions: Mapping[int, Callable[[int], None]]) -> None:
        super().__init__(name="signals", daemon=True)
        self.actions = dict(actions)
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)  # the C handler must never block on a full pipe

    def install(self) -> SignalThread:
        """Take over the signals (main thread only: ``set_wakeup_fd``'s rule) and start acting on them."""
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for signum in self.actions:
            signal.signal(signum, _ignore)
        self.start()
        return self

    def run(self) -> None:
        while True:
            try:
                received = os.read(self.read_fd, 64)
            except InterruptedError:
                continue
            for signum in received:
                action = self.actions.get(signum)
                if action is None:
                    continue
                try:
                    action(signum)
                except Exception:  # one failed action must not end the thread: the next signal still counts
                    log.exception("acting on signal %d failed", signum)
