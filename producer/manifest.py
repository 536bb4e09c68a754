"""A backfill's manifest and its identity (pure): what each line's job carries, its consumer group, its job ids.

A manifest holds one image a line: an ``http://`` / ``https://`` / ``file://`` URL, or a local path, which
becomes a ``file://`` URL (relative paths are taken under ``fetch_root``, the directory the workers read
``file://`` URLs under, or else under the manifest's own directory). Blank lines and ``#`` comments are
skipped. A line that cannot be a job (another scheme, a path outside ``fetch_root``) is answered at once,
failed, without being enqueued.

A backfill is (manifest, output file, model tag): its consumer group and every line's job id are derived
from those, so a run killed and started again with the same arguments asks for the very same jobs (a
caller-chosen id is created only if absent: nothing is enqueued twice), while the same manifest against
another model (a new version) or into another output is a backfill of its own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .wire.jobs import ProtocolError, check_image_url

URL_SCHEMES = ("http", "https", "file")
CONSUMER = "backfill"  # one consumer per backfill: a restart gets back what its predecessor left pending


@dataclass(frozen=True)
class ManifestLine:
    """One line of a manifest: its number (1-based, as an editor shows it), its text as written, and the URL
    its job carries; or ``error`` ({type, message}) when it cannot be a job."""

    number: int
    text: str
    url: str | None
    error: dict[str, str] | None = None


def line_url(text: str, fetch_root: Path | None, base: Path) -> str:
    """The image URL of a manifest line: a URL as it is (checked as a job's ``image_url``), a local path as a
    ``file://`` URL. ``ProtocolError`` for another scheme; ``PermissionError`` for a path outside ``fetch_root``."""
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in URL_SCHEMES:
        return check_image_url(text)
    if scheme:
        raise ProtocolError(f"{scheme}:// is not fetched: a line is an http(s):// or file:// URL, or a local path")
    path = Path(os.path.normpath((fetch_root or base) / text))  # an absolute path stays as it is
    if fetch_root is not None and not path.is_relative_to(fetch_root):
        raise PermissionError(f"{text!r} is outside --fetch-root {str(fetch_root)!r}")
    return check_image_url(path.as_uri())


def parse_line(number: int, raw: str, fetch_root: Path | None, base: Path) -> ManifestLine | None:
    """A manifest line, or None for a blank line or a comment."""
    text = raw.strip()
    if not text or text.startswith("#"):
        return None
    try:
        return ManifestLine(number, text, line_url(text, fetch_root, base))
    except PermissionError as exc:
        return ManifestLine(number, text, None, {"type": "forbidden_url", "message": str(exc)})
    except ProtocolError as exc:
        return ManifestLine(number, text, None, {"type": "bad_request", "message": str(exc)})


def read_manifest(path: Path, fetch_root: Path | None = None) -> Iterator[ManifestLine]:
    """The manifest's lines, read as they are needed (a catalog may hold millions)."""
    root = Path(os.path.abspath(fetch_root)) if fetch_root is not None else None
    base = Path(os.path.abspath(path)).parent
    with open(path, encoding="utf-8") as lines:
        for number, raw in enumerate(lines, start=1):
            line = parse_line(number, raw, root, base)
            if line is not None:
                yield line


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class BackfillIdentity:
    """What names a backfill: its manifest and output (absolute paths) and the model tag it runs for."""

    manifest: str
    out: str
    tag: str

    @classmethod
    def of(cls, manifest: Path, out: Path, tag: str) -> BackfillIdentity:
        return cls(os.path.abspath(manifest), os.path.abspath(out), tag)

    @property
    def key(self) -> str:
        """16 hex digits that tell this backfill from any other."""
        return _digest(self.manifest, self.out, self.tag)[:16]

    @property
    def group(self) -> str:
        """The backfill's own consumer group on the results feed."""
        return f"backfill-{self.key}"

    def job_id(self, line: ManifestLine) -> str:
        """The line's job id: the backfill, the line's number and (8 hex digits of) its URL; RQ's id
        alphabet (letters, digits, ``-``)."""
        return f"backfill-{self.key}-{line.number}-{_digest(line.url or line.text)[:8]}"
