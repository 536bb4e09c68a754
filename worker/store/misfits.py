"""Keys of the wrong type, as the store's scripts find them: told to the operator in a log line (once a minute
per key at most, with what it costs), counted per key for ``adclassify_wrong_type_keys_total``, and kept a
while for the heartbeat, which puts them in this worker's hash where ``producer status`` shows them.

Any client allowed to write a key can create it with another type while it does not exist (``HSET
rq:wip:classify x y`` with a web backend's credentials). The scripts check every key before they write
(``lua/prelude.lua``); what each script does about each key is in RELIABILITY.md ("Keys of the wrong type").
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from producer.wire import keys

from .base import Misfit
from .printable import shown
from .rqdata import text

log = logging.getLogger(__name__)

# A job's own keys (and other keys named after an id), by prefix: the metric counts them by pattern, so its
# label values stay bounded whatever the ids.
PER_ID = {
    keys.EXECUTIONS_PREFIX: "executions",
    keys.EXECUTION_PREFIX: "execution",
    keys.results("\0").partition("\0")[0]: "results",
    keys.JOB_PREFIX: "job",
    keys.SEEN_PREFIX: "seen",
    keys.WORKER_PREFIX: "worker",
}

# What a key of the wrong type costs, by its role (a script call's key field, or a per-id key's kind).
EFFECTS = {
    "queue": "nothing can be queued or taken; re-queues (retries, give-backs, reaping) wait for it",
    "intermediate": "no job can start",
    "wip": "no job can start or finish: queued jobs stay queued, started ones stay started",
    "worker_executions": "no job can start or finish here",
    "worker_key": "this worker's hash is not updated",
    "sets": "this worker cannot register",
    "queues": "re-queued retries are not added to it",
    "finished": "successful jobs are recorded without their entry in this registry",
    "failed": "failed jobs stay started under their worker and run again once it is deleted",
    "stream": "results are not appended to the durable feed (the channel and each job's result get them)",
    "results": "its job is not started (it stays queued) or not recorded (it stays started and is re-queued "
    "once the key is deleted)",
    "executions": "its job is not started (it stays queued); clean-ups skip it",
    "execution": "its job is not started (it stays queued)",
}


def misfits_of(reply: Any) -> list[Misfit]:
    """The ``{key, found, wanted}`` triples of a script's reply."""
    return [Misfit(text(key), text(found), text(wanted)) for key, found, wanted in reply or []]


def pattern_of(key: str) -> str:
    """The metric's label for ``key``: the key itself, or ``<prefix>*`` for a key named after an id."""
    for prefix in PER_ID:
        if key.startswith(prefix):
            return prefix + "*"
    return key


def role_of(call: Any, key: str) -> str:
    """What ``key`` is to the script ``call`` runs: the name of its key field, or the kind of a per-id key."""
    for f in fields(call):
        value = getattr(call, f.name)
        if f.metadata.get("keys") and (value == key or (f.metadata.get("many") and key in value)):
            return f.name
    return next((kind for prefix, kind in PER_ID.items() if key.startswith(prefix)), "other")


class MisfitReport:
    """Every key of the wrong type the scripts found: logged (each key at most once per ``log_every_s``),
    counted by pattern, and remembered (``recent``). Thread-safe: the pipeline and the heartbeat report."""

    def __init__(self, log_every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.log_every_s, self.clock = log_every_s, clock
        self.counts: Counter[str] = Counter()  # by pattern_of(key)
        self.seen: dict[str, float] = {}  # key -> when last found
        self.logged: dict[str, tuple[float, int]] = {}  # key -> (when last logged, times found since)
        self.lock = threading.Lock()

    def report(self, call: Any, found: Iterable[Misfit], refused: bool = False) -> None:
        """Report what the script of ``call`` found (``refused``: it wrote nothing because of them)."""
        now = self.clock()
        for misfit in found:
            role = role_of(call, misfit.key)
            with self.lock:
                self.counts[pattern_of(misfit.key)] += 1
                self.seen[misfit.key] = now
                last, since = self.logged.get(misfit.key, (float("-inf"), 0))
                due = now - last >= self.log_every_s
                self.logged[misfit.key] = (now, 0) if due else (last, since + 1)
            if due:
                log.error(
                    "redis key %s (%s) is a %s, not a %s; %s%s: %s. Delete it (a client that can write it, "
                    "such as a web backend, made it: see docs/security.md)%s",
                    shown(misfit.key),
                    role,
                    misfit.found,
                    misfit.wanted,
                    call.script.upper(),
                    " refused, nothing written" if refused else "",
                    EFFECTS.get(role, "it is left alone"),
                    f" ({since} more time(s) since the last report)" if since else "",
                )
        self._forget(now)

    def recent(self, within_s: float) -> list[str]:
        """The keys found within the last ``within_s`` seconds, most recent first (at most 10)."""
        now = self.clock()
        with self.lock:
            found = sorted(((t, k) for k, t in self.seen.items() if now - t <= within_s), reverse=True)
        return [k for _, k in found[:10]]

    def _forget(self, now: float) -> None:
        """Drop keys not found for a while (per-job keys would otherwise pile up)."""
        horizon = max(self.log_every_s, 600.0)
        with self.lock:
            for key in [k for k, t in self.seen.items() if now - t > horizon]:
                self.seen.pop(key, None)
                self.logged.pop(key, None)
