"""JSON for anything msgpack decodes (``listen --json``): bytes, ext types, timestamps, odd keys, NaN.

Plain values stay as they are. Values JSON has no type for become tagged objects or strings:
bytes -> ``{"$bytes": base64}``, a msgpack ext -> ``{"$ext": code, "data": base64}``, a msgpack
Timestamp or a datetime -> an ISO 8601 string (UTC, nanoseconds kept; ``{"$timestamp": [s, ns]}``
past year 9999), NaN and infinities -> ``{"$float": "nan" | "inf" | "-inf"}``, a map key that is not
a string -> its JSON text, anything else -> ``{"$repr": ...}``. The output is strict, ASCII JSON.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import date, datetime, timedelta, timezone
from typing import Any

import msgpack

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def timestamp_text(stamp: msgpack.Timestamp) -> str | dict[str, list[int]]:
    """``2024-05-01T12:00:00.000000001Z``; a moment outside datetime's range as ``{"$timestamp": [s, ns]}``."""
    try:
        moment = _EPOCH + timedelta(seconds=stamp.seconds)
    except OverflowError:
        return {"$timestamp": [stamp.seconds, stamp.nanoseconds]}
    fraction = f".{stamp.nanoseconds:09d}" if stamp.nanoseconds else ""
    return moment.replace(tzinfo=None).isoformat() + fraction + "Z"


def key_text(key: Any) -> str:
    """A map key as a JSON object key: strings as they are, anything else as its JSON text."""
    return key if isinstance(key, str) else json.dumps(jsonable(key), sort_keys=True)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (see the module's docstring for the tags)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": _b64(bytes(value))}
    if isinstance(value, msgpack.Timestamp):
        return timestamp_text(value)
    if isinstance(value, date):  # datetime too (a subclass of date)
        return value.isoformat()
    if isinstance(value, msgpack.ExtType):
        return {"$ext": value.code, "data": _b64(value.data)}
    if isinstance(value, dict):
        return {key_text(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return {"$repr": repr(value)}


def dumps_json(value: Any) -> str:
    """One line of strict JSON for any value msgpack decodes (never raises for those)."""
    return json.dumps(jsonable(value), allow_nan=False)
