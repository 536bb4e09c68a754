"""A backfill's output: one JSON line per answered manifest line, appended and flushed as results come, read
back when a run resumes; the failed lines as a manifest of their own; the tally by outcome.

A record: ``line``, ``url``, ``job_id`` (None for a line refused before it was enqueued), ``ok``, ``label``,
``score``, ``topk``, ``error`` ({type, message} or None), ``model`` (the tag that answered it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import zlib
from array import array
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from .jsonout import dumps_json
from .manifest import ManifestLine

log = logging.getLogger(__name__)

OK, FAILED = 1, 2


class OutputBusy(RuntimeError):
    """Another process holds the output file (a backfill of the same output is running)."""


def make_record(line: ManifestLine, job_id: str | None, result: dict[str, Any]) -> dict[str, Any]:
    """The output line for a manifest line and its result map (or a refusal shaped like one)."""
    return {
        "line": line.number,
        "url": line.url if line.url is not None else line.text,
        "job_id": job_id,
        "ok": bool(result.get("ok")),
        "label": result.get("label"),
        "score": result.get("score"),
        "topk": result.get("topk") or [],
        "error": result.get("error"),
        "model": result.get("model", ""),
    }


def refusal(line: ManifestLine) -> dict[str, Any]:
    """The record of a line answered without a job (it cannot be one)."""
    return make_record(line, None, {"ok": False, "error": line.error})


def outcome(record: dict[str, Any]) -> str:
    """``ok``, or the error's type."""
    return "ok" if record.get("ok") else str((record.get("error") or {}).get("type") or "failed")


class Answered:
    """The manifest lines the output answers, by number: ok or failed, and a checksum of the URL each was
    answered for (1 + 4 bytes a line, so a catalog of millions fits)."""

    def __init__(self) -> None:
        self._state = bytearray()
        self._crc = array("I")
        self.outcomes: Counter[str] = Counter()
        self.models: set[str] = set()  # the model tags that answered (a resume must not start another backfill)

    def _grow(self, number: int) -> None:
        if number >= len(self._state):
            more = number + 1 - len(self._state)
            self._state.extend(bytes(more))
            self._crc.extend([0] * more)

    def add(self, record: dict[str, Any]) -> bool:
        """Count a record; False (ignored) if its line is answered already."""
        number = int(record["line"])
        if self.state(number):
            return False
        self._grow(number)
        self._state[number] = OK if record.get("ok") else FAILED
        self._crc[number] = zlib.crc32(str(record.get("url")).encode())
        self.outcomes[outcome(record)] += 1
        if record.get("ok") and record.get("model"):
            self.models.add(str(record["model"]))
        return True

    def state(self, number: int) -> int:
        """0 (not answered), ``OK`` or ``FAILED``."""
        return self._state[number] if number < len(self._state) else 0

    def same_url(self, line: ManifestLine) -> bool:
        """Whether an answered line was answered for the URL the manifest holds now."""
        return self._crc[line.number] == zlib.crc32(str(line.url if line.url is not None else line.text).encode())

    @property
    def count(self) -> int:
        return sum(self.outcomes.values())


def _read_back(file: BinaryIO, answered: Answered) -> None:
    """Count every complete record, a line at a time (an output of millions of lines is never held whole);
    cut off a last line a kill left half-written."""
    end = 0  # just past the last complete line
    for raw in file:
        if not raw.endswith(b"\n"):
            log.warning("dropping a half-written last line of the output (%d bytes)", len(raw))
            file.truncate(end)
            break
        end += len(raw)
        try:
            answered.add(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            log.warning("skipping an output line that is not a record: %.80r", raw)


class OutFile:
    """The output file, held (an exclusive lock) while a backfill writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answered = Answered()
        self._file: BinaryIO | None = None

    def open(self) -> OutFile:
        """Lock the file (``OutputBusy`` if another process holds it) and read back what it answers."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)  # held (and locked) until close()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(f"another backfill is writing {self.path}") from None
        file = os.fdopen(fd, "a+b")
        file.seek(0)
        _read_back(file, self.answered)
        file.seek(0, os.SEEK_END)
        self._file = file
        return self

    def write(self, record: dict[str, Any]) -> bool:
        """Append a record and flush it; False (nothing written) if its line is answered already."""
        assert self._file is not None, "open() first"
        if not self.answered.add(record):
            return False
        self._file.write(dumps_json(record).encode() + b"\n")
        self._file.flush()
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # releases the lock
            self._file = None


def write_failed(path: Path, lines: Iterable[ManifestLine]) -> int:
    """The failed lines, as written in the manifest, one a line (a manifest to run again); replaced whole.
    How many; with none, no file (a stale one is removed)."""
    texts = [line.text for line in lines]
    if not texts:
        path.unlink(missing_ok=True)
        return 0
    temp = path.with_name(path.name + ".tmp")
    temp.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
    os.replace(temp, path)
    return len(texts)
