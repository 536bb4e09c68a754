"""The decode stage: image bytes to the model's fixed-size uint8 pixels, one image at a time, off the loop.

``Decoder`` is the interface the pipeline uses; ``worker.decode.pool`` has the thread and process
pools that run ``worker.decode.cpu`` (Pillow), ``worker.decode.gpu`` the nvImageCodec decoder that
falls back to them image by image. Jobs by reference (``image_url``) pass through a fetch stage first
(``Fetches``; ``worker.decode.fetch``, its policy in ``worker.decode.urls``). This module, ``cpu``, ``pool``,
``header``, ``gate`` and ``budget`` import no torch; ``gpu`` does (it hands tensors to the model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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


# a hand-off of several images' results: (index in the submitted list, result) pairs
Decoded = Callable[[list[tuple[int, DecodeResult]]], None]


class Decoder(Protocol):
    """Decodes images in the background; ``done`` is called once per submitted image, from any thread."""

    backend: str  # "cpu" (Pillow) or "gpu" (nvImageCodec): results carry what decoded them

    def submit(self, data: bytes, done: Callable[[DecodeResult], None]) -> None:
        """Queue one image."""

    def submit_many(self, images: Sequence[bytes], done: Decoded) -> None:
        """Queue several images (one take's) in one hand-off. ``done`` gets lists of ``(index, result)``, from
        any thread; every index comes back exactly once over its calls, and images decoded together come back
        together (one call per GPU decode call; one per image for a decoder that decodes them one by one)."""

    def close(self) -> None:
        """Finish what was submitted (every ``done`` has been called on return), then stop."""


def submit_each(decoder: Decoder, images: Sequence[bytes], done: Decoded) -> None:
    """``submit_many`` for a decoder that decodes image by image: one ``done`` call per image."""
    for i, data in enumerate(images):
        decoder.submit(data, lambda result, i=i: done([(i, result)]))


@dataclass
class Fetched:
    """One image URL fetched (``data``, the image's bytes) or refused (``error``); when and how long."""

    data: bytes | None
    error: JobError | None
    started: float  # time.monotonic() when fetching began
    ms: float


class Fetches(Protocol):
    """Fetches image URLs in the background; ``done`` is called once per submitted URL, from any thread."""

    def submit(self, url: str, done: Callable[[Fetched], None]) -> None:
        """Queue one URL."""

    def close(self, drop_queued: bool = False) -> None:
        """Finish what was submitted (every ``done`` has been called on return), then stop; with ``drop_queued``
        (stopping), URLs not started yet are dropped: their ``done`` is never called."""


class NoFetch:
    """The fetch stage of a worker with neither ``--fetch-allow`` nor ``--fetch-root``: every URL is refused."""

    def submit(self, url: str, done: Callable[[Fetched], None]) -> None:
        """Refuse at once: ``forbidden_url``."""
        error = JobError(
            "forbidden_url",
            "this worker fetches no URLs: --fetch-allow (WORKER_FETCH_ALLOW) and "
            "--fetch-root (WORKER_FETCH_ROOT) are empty",
        )
        done(Fetched(None, error, time.monotonic(), 0.0))

    def close(self, drop_queued: bool = False) -> None:
        """Nothing to finish."""
