"""Importing this module leaves a mark: the plain-RQ allow-list test proves that callbacks are never imported."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("SIDE_EFFECT_FILE"):
    Path(os.environ["SIDE_EFFECT_FILE"]).write_text("imported")


def callback(*args: object, **kwargs: object) -> None:
    """What a job's callback name points at."""
