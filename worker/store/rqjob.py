"""``AllowListedJob``: the allow-list on the plain ``rq worker`` path, checked before anything is imported.

``rq worker -w rq.SimpleWorker -S producer.serializer.MsgpackSerializer --job-class
worker.store.rqjob.AllowListedJob`` runs only allow-listed functions. RQ imports a job's function
(``Job.func``) and its success, failure and stopped callbacks (named in plain hash fields, which
never pass through the serializer) by name; this class refuses a function outside the allow-list
with a ``forbidden_function`` job error, and never imports a callback (the allow-list has none); it reads
job data with msgpack only, and ignores the webhooks and repeats a job's hash may name.
"""

from __future__ import annotations

import logging
from typing import Any

from rq.job import Job

from producer.wire.jobs import allowed
from producer.wire.serializer import MsgpackSerializer

from ..errors import JobError
from .printable import shown

log = logging.getLogger(__name__)


class AllowListedJob(Job):
    """An RQ job that runs only allow-listed functions, reads its data and meta with msgpack whatever serializer
    the worker was given (``-S`` forgotten: RQ's default would unpickle both, before the allow-list is asked),
    and never runs callbacks, sends webhooks (RQ 3 reads a ``webhooks`` hash field and POSTs wherever it says:
    server-side request forgery past the fetch policy) or repeats (``repeats_left``): hash fields anyone who may
    enqueue can write."""

    def __init__(self, id: str | None = None, connection: Any = None, serializer: Any = None) -> None:
        super().__init__(id, connection=connection, serializer=MsgpackSerializer)

    def restore(self, raw_data: Any) -> Any:
        """RQ's restore, without the webhooks and repeats a job's hash may name."""
        restored = super().restore(raw_data)
        self.webhooks, self.repeats_left = [], None
        return restored

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        """Never sends a webhook (none is allow-listed)."""

    @property
    def func(self) -> Any:
        """The job's function, if allow-listed; else ``JobError("forbidden_function")``, nothing imported."""
        name = self.func_name
        if not allowed(name) or self.instance is not None:
            log.error("job %s names %r, which is not allow-listed: refused, not imported", shown(self.id), name)
            raise JobError("forbidden_function", f"function {name!r} is not allow-listed")
        return super().func

    @property
    def success_callback(self) -> None:
        """Never imported nor run (no callback is allow-listed)."""
        return None

    @property
    def failure_callback(self) -> None:
        """Never imported nor run (no callback is allow-listed)."""
        return None

    @property
    def stopped_callback(self) -> None:
        """Never imported nor run (no callback is allow-listed)."""
        return None
