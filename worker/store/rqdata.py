"""How the Redis store reads RQ's data: a started job's hash as a ``JobRecord``, reply values, RQ's time
format. Pure functions, no Redis."""

from __future__ import annotations

import logging
import zlib
from datetime import datetime, timezone
from typing import Any

from producer.wire.cache import asked
from producer.wire.jobs import MAX_TTL_S, clamp_ttl, inflate
from producer.wire.serializer import SerializationError, loads

from .base import JobRecord
from .printable import shown

log = logging.getLogger(__name__)


def sort_take_reply(reply: list[Any]) -> tuple[list[tuple[str, str]], int, int]:
    """TAKE's reply per id (job_id, state, execution id): the ``(job_id, execution_id)`` of each job started,
    the ids dropped (not UTF-8, or their job ended already) and held (keys of the wrong type); the others are
    logged here."""
    begun, gone, held, dropped = [], [], [], 0
    for i in range(0, len(reply), 3):
        job_id, state, eid = reply[i], reply[i + 1], text(reply[i + 2])
        if state == -1:
            dropped += 1
            log.error("dropped queued id %s: not UTF-8, so no client can name it (never started)", shown(job_id))
        elif state == 3:
            dropped += 1
            log.warning(
                "dropped queued id %s: its job has ended already (queued again without a requeue): not run twice",
                shown(job_id),
            )
        elif state is None:
            gone.append(shown(job_id))
        elif state == 1:
            begun.append((text(job_id), eid))
        elif state == 2:
            held.append(shown(job_id))
    if gone:
        log.warning("answered job_gone for %d queued id(s) whose job hash is gone: %s", len(gone), ", ".join(gone))
    if held:  # each take while it lasts: the key's own report (once a minute) is the warning
        log.debug(
            "left %d job(s) queued, at the queue's tail: keys of their own are of the wrong type: %s",
            len(held),
            ", ".join(held),
        )
    return begun, dropped, len(held)


# the fields of RQ's job hash that read_record uses (TAKE's caller reads only these)
RECORD_FIELDS = (b"enqueued_at", b"lost_deliveries", b"retries_left", b"result_ttl", b"failure_ttl", b"data", b"meta")


def read_record(
    job_id: str, execution_id: str, fields: dict[bytes, bytes], started_at: float, taken_at: float, max_data_bytes: int
) -> JobRecord:
    """The record of a job just started, from its hash's ``fields``. What cannot be read is ``read_error``
    (the job then fails as ``bad_job_data``), with whatever was read before it."""
    values: dict[str, Any] = {}
    try:
        values["enqueued_at"] = parse_time(fields.get(b"enqueued_at"))
        values["lost"] = int(fields.get(b"lost_deliveries") or 0)
        values["retries_left"] = int(fields.get(b"retries_left") or 0)
        values["result_ttl_s"] = _ttl_or_none(fields.get(b"result_ttl"))
        values["failure_ttl_s"] = _ttl_or_none(fields.get(b"failure_ttl"))
        values["cache_asked"] = asked(fields.get(b"meta"))
        call = loads(inflate(fields.get(b"data"), max_data_bytes))
        if not isinstance(call, list | tuple) or len(call) != 4:
            raise ValueError("job data is not a (function, instance, args, kwargs) call")
        values["func_name"], instance, values["args"], values["kwargs"] = call
        if instance is not None:
            raise ValueError("job data names an instance method")
    except (ValueError, TypeError, zlib.error, SerializationError) as exc:
        log.warning("job %s has unreadable data: %s", shown(job_id), shown(str(exc)))
        values["read_error"] = str(exc)
    return JobRecord(job_id, execution_id, started_at=started_at, taken_at=taken_at, **values)


def text(value: Any) -> str:
    """A reply value as text; bytes that are not UTF-8 keep their escapes (never a crash)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)


def iso(when: datetime) -> str:
    """RQ's ``utcformat``: ``2026-11-29T19:20:30.123456Z``."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: bytes | None) -> float | None:
    """A time as RQ writes it (``utcformat``, or ISO 8601 with an offset) as Unix seconds; None when absent."""
    if not value:
        return None
    raw = value.decode()
    parsed = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _int_or_none(value: bytes | None) -> int | None:
    return None if value in (None, b"") else int(value)


def _ttl_or_none(value: bytes | None) -> int | None:
    """A TTL field of the job's hash, as FINISH can apply it (``clamp_ttl``); RQ writes whole seconds, another
    client may write ``1.5`` (read as 1) or ``1e20`` (kept ``MAX_TTL_S``)."""
    if value in (None, b""):
        return None
    try:
        return clamp_ttl(int(value))
    except ValueError:
        number = float(value)  # ValueError again for what is no number at all: the job's data is unreadable
        if number != number:
            raise ValueError(f"a TTL of {value!r}") from None
        return clamp_ttl(int(max(-1.0, min(number, float(MAX_TTL_S)))))
