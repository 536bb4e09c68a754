"""The batching policy, pure: collect up to N items against one deadline (no Redis, no torch)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def collect(
    take_blocking: Callable[[float], T | None],
    take_now: Callable[[int], list[T]],
    *,
    max_items: int,
    max_wait_s: float,
    idle_wait_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> list[T]:
    """Collect one batch.

    Block up to ``idle_wait_s`` for a first item; then take whatever is there at once
    (``take_now(n)``, one round trip for many); while the batch is short, block for the next item
    until ``max_wait_s`` after the first one has passed. An empty list means nothing arrived.
    """
    first = take_blocking(idle_wait_s)
    if first is None:
        return []
    items = [first]
    deadline = clock() + max_wait_s
    while len(items) < max_items:
        items.extend(take_now(max_items - len(items)))
        left = deadline - clock()
        if len(items) >= max_items or left <= 0:
            break
        item = take_blocking(left)
        if item is None:
            break
        items.append(item)
    return items
