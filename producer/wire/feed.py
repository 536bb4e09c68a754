"""The durable results feed's shape: its entries' fields, and its consumer groups as ``XINFO GROUPS`` reports them."""

from __future__ import annotations

from typing import Any

# Fields of a feed entry: the job's id (text) and its result (the same msgpack bytes as the channel's message).
JOB_ID_FIELD, RESULT_FIELD = "job_id", "result"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def group_rows(groups: list[dict[Any, Any]]) -> list[dict[str, Any]]:
    """Each consumer group from an ``XINFO GROUPS`` reply: name, consumers, pending, last delivered id,
    entries read and lag; ``lag`` is None on Redis < 7 (not reported) or when Redis cannot tell."""
    rows = []
    for raw in groups:
        info = {_text(key): value for key, value in raw.items()}
        rows.append(
            {
                "name": _text(info["name"]),
                "consumers": int(info["consumers"]),
                "pending": int(info["pending"]),
                "last_delivered_id": _text(info["last-delivered-id"]),
                "entries_read": info.get("entries-read"),
                "lag": info.get("lag"),
                "reports_lag": "lag" in info,
            }
        )
    return rows
