"""The decode stage: image bytes to the model's fixed-size uint8 pixels, one image at a time, off the loop.

``Decoder`` is the interface the pipeline uses; ``worker.decode.pool`` has the thread and process
pools that run ``worker.decode.cpu`` (Pillow), ``worker.decode.gpu`` the nvImageCodec decoder that
falls back to them image by image. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import JobError


@dataclass
class DecodeResult:
    """One image decoded or refused (``error``); when and how long. ``pixels``: ``H*W*3`` uint8 bytes (Pillow),
    or a uint8 ``H x W x 3`` torch tensor already on the device (the GPU decoder); None on error."""

    pixels: Any  # bytes | torch.Tensor | None: typed loosely so this module stays free of torch
    error: JobError | None
    started: float  # time.monotonic() when decoding began
    ms: float


class Decoder(Protocol):
    """Decodes images in the background; ``done`` is called once per submitted image, from any thread."""

    def submit(self, data: bytes, done: Callable[[DecodeResult], None]) -> None:
        """Queue one image."""

    def close(self) -> None:
        """Finish what was submitted (every ``done`` has been called on return), then stop."""
