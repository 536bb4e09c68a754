"""The wire format: msgpack behind one ``dumps``/``loads`` pair, usable as an RQ serializer.

RQ calls ``dumps``/``loads`` for job data ``(func_name, instance, args, kwargs)``, job meta and
results. msgpack can only describe plain data (maps, lists, str, bytes, numbers, bool, nil), so a
payload can never make the reader build arbitrary objects, unlike pickle.
"""

from __future__ import annotations

from typing import Any

import msgpack


class SerializationError(ValueError):
    """Data that cannot be written or read as msgpack."""


class MsgpackSerializer:
    """RQ's serializer protocol over msgpack (``rq ... -S producer.serializer.MsgpackSerializer``)."""

    @staticmethod
    def dumps(obj: Any, /) -> bytes:
        """Encode plain data; tuples become lists, bytes stay bytes."""
        try:
            return msgpack.packb(obj, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot encode {type(obj).__name__} as msgpack: {exc}") from exc

    @staticmethod
    def loads(data: bytes, /) -> Any:
        """Decode msgpack; anything else (a pickle, JSON, garbage) raises ``SerializationError``."""
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (msgpack.UnpackException, ValueError, TypeError) as exc:
            raise SerializationError(f"job data is not valid msgpack: {exc}") from exc


dumps = MsgpackSerializer.dumps
loads = MsgpackSerializer.loads
