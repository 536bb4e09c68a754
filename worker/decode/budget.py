"""The pixel budget: how many source pixels may be decoding at once, across the whole decode pool.

A photo just under ``--max-pixels`` costs hundreds of MiB while it decodes (RGB planes, the
resize's buffers). With N decode threads, N such photos at once would multiply that. Each decode
holds its image's pixel count (read from the header, without decoding) from the budget while it
runs; one image larger than the whole budget still runs, alone. No torch here.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image


def header_pixels(data: bytes) -> int:
    """Width x height from the image's header (nothing decoded); 0 when the header can't be read
    (the decoder then refuses the image at once, so it costs nothing)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # hostile bytes: Pillow raises any type; the decoder reports it
        return 0
    return max(0, width) * max(0, height)


class PixelBudget:
    """A counting limit on pixels decoding at once; ``peak`` is the most ever held together."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.used = self.peak = 0
        self.cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Wait until ``pixels`` fit (an image bigger than the budget waits until it runs alone)."""
        pixels = min(max(0, pixels), self.capacity)
        with self.cond:
            while self.used and self.used + pixels > self.capacity:
                self.cond.wait()
            self.used += pixels
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self.cond:
                self.used -= pixels
                self.cond.notify_all()
