"""The batching policy, pure: which decoded jobs form the next batch, and how long to wait (no Redis, no torch)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
DECODE_POLL_S = 0.05  # how often to look again at the decoding count while waiting for taken jobs


def next_batch(
    get: Callable[[float], T | None],
    *,
    max_items: int,
    max_wait_s: float,
    busy: bool,
    idle_wait_s: float,
    taken_at: Callable[[T], float],
    decoding: Callable[[], int] = lambda: 0,
    clock: Callable[[], float] = time.monotonic,
    call_wait_s: float = 0.0,
) -> list[T]:
    """Form one batch from a stream of decoded items.

    ``get(timeout_s)`` returns the next item, or None when none came in time (0: don't wait).
    When the model is ``busy`` (it just finished a batch) and something is ready, the batch is
    whatever is ready, up to ``max_items``, with no extra wait. Otherwise wait up to
    ``idle_wait_s`` for a first item, then until ``max_wait_s`` after the earliest item's
    ``taken_at`` (our own clock, never a server-side timeout) for a fuller batch; past that, only
    while jobs already taken are still ``decoding`` (max-wait is for traffic, not for our decoders).

    ``call_wait_s`` (a decoder that hands images back a call at a time, the GPU's): when the model is busy
    and what is ready is a fragment (under half a batch) while images are still decoding, wait up to that
    long for the next hand-off rather than run the fragment: the call in flight completes into this batch.
    """
    items = _ready(get, max_items)
    if items and busy:
        if call_wait_s > 0 and len(items) < max_items // 2 and decoding() > 0:
            items += _next_call(get, call_wait_s, max_items - len(items))
        return items
    if not items:
        first = get(idle_wait_s)
        if first is None:
            return []
        items = [first, *_ready(get, max_items - 1)]
    deadline = min(taken_at(item) for item in items) + max_wait_s
    while len(items) < max_items:
        left = deadline - clock()
        if left <= 0:
            if decoding() == 0:
                break
            left = DECODE_POLL_S
        item = get(left)
        if item is None:
            if deadline <= clock() and decoding() == 0:
                break
            continue
        items.append(item)
        items += _ready(get, max_items - len(items))
    return items


def _next_call(get: Callable[[float], T | None], wait_s: float, limit: int) -> list[T]:
    """The next hand-off, waited for up to ``wait_s``, with whatever is ready after it (up to ``limit``)."""
    item = get(wait_s)
    return [] if item is None else [item, *_ready(get, limit - 1)]


def _ready(get: Callable[[float], T | None], limit: int) -> list[T]:
    items: list[T] = []
    while len(items) < limit and (item := get(0.0)) is not None:
        items.append(item)
    return items
