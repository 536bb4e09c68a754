"""What a model file holds in either format (its metadata: labels, preprocessing, ``name@version``), and
which format a file is, told from its content.

Both formats carry the same three JSON entries (docs/model-format.md): a TorchScript file as
``_extra_files``, an AOTInductor ``.pt2`` package as ``extra/`` entries of its PT2 archive.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .decode.spec import Preprocess

EXTRA_FILES = ("labels.json", "preprocess.json", "model.json")


class ModelError(RuntimeError):
    """A model file that cannot be used (missing metadata, wrong outputs, built for another device)."""


@dataclass(frozen=True)
class ModelInfo:
    """The metadata embedded in a model file."""

    name: str
    version: str
    labels: tuple[str, ...]
    preprocess: Preprocess

    @property
    def tag(self) -> str:
        """``name@version``, as results report it."""
        return f"{self.name}@{self.version}"


def model_info(path: str | Path, extra: Mapping[str, str]) -> ModelInfo:
    """The metadata from a file's three JSON entries; ``ModelError`` if one is missing or malformed."""
    missing = [name for name in EXTRA_FILES if not extra.get(name)]
    if missing:
        raise ModelError(f"{path}: model file lacks {', '.join(missing)} (see docs/model-format.md)")
    try:
        labels = tuple(str(x) for x in json.loads(extra["labels.json"]))
        preprocess = Preprocess.from_dict(json.loads(extra["preprocess.json"]))
        ident = json.loads(extra["model.json"])
        return ModelInfo(str(ident["name"]), str(ident["version"]), labels, preprocess)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: malformed metadata: {exc}") from exc


def extra_entries(path: str | Path) -> dict[str, str]:
    """The ``<archive>/extra/`` entries of a model file of either format (both are zips), without loading it."""
    with zipfile.ZipFile(path) as archive:
        return {
            name.split("/extra/", 1)[1]: archive.read(name).decode()
            for name in archive.namelist()
            if name.count("/") == 2 and "/extra/" in name
        }


def read_info(path: str | Path) -> ModelInfo:
    """A model file's metadata, read from its zip without loading any weight; ``ModelError`` if it has none."""
    try:
        entries = extra_entries(path)
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a model file ({exc})") from exc
    return model_info(path, entries)


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a PT2 archive (an AOTInductor package): by its ``.pt2`` suffix, else by content
    (a zip whose ``archive_format`` entry says ``pt2``; TorchScript files are zips without one)."""
    if Path(path).suffix == ".pt2":
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            marker = next((n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/archive_format")), None)
            return marker is not None and archive.read(marker).strip() == b"pt2"
    except (OSError, zipfile.BadZipFile):
        return False
