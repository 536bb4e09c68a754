"""How the producer stores a job's ``data`` field: as the serializer wrote it, not zlib-compressed."""

from __future__ import annotations

from typing import Any

from rq.job import Job


class PlainDataJob(Job):
    """An RQ job whose ``data`` (the msgpack call ``[func, None, args, kwargs]``) is stored uncompressed.

    RQ's ``Job.to_dict`` zlib-compresses ``data``; JPEG bytes do not shrink (0.1%), and compressing
    them cost the producer ~2 ms per 120 KB. RQ's ``Job.restore`` tries ``zlib.decompress`` and falls
    back to the bytes as stored, and msgpack data of a call starts with 0x94 (an array of 4), which is
    never a valid zlib header (compression method 4, not 8), so every reader (``Job.fetch``, ``rq
    info``, a plain ``rq worker``, our worker's store) reads it unchanged. Everything else is written
    exactly as RQ writes it.
    """

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        """RQ's hash for this job, with ``data`` uncompressed."""
        data = self.data
        self._data = b""  # RQ compresses whatever ``data`` holds: give it nothing to do
        try:
            obj = super().to_dict(include_meta=include_meta, include_result=include_result)
        finally:
            self._data = data
        obj["data"] = data
        return obj
