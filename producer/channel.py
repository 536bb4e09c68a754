"""The best-effort results channel ``<queue>:results``: every result as it is published, on every shard.

At-least-once and best-effort (a subscriber that is away misses what was published meanwhile):
de-duplicate on ``job_id``; use the durable feed (``producer.feed``) for what must not be lost. A
message that is not a result is logged and skipped. With several shards there is one subscription
per shard, merged (threads for the sync client, tasks for asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from .wire.jobs import ProtocolError
from .wire.results import validate_result
from .wire.serializer import SerializationError, loads

log = logging.getLogger(__name__)

AWAY_WAIT_S = 1.0  # a shard whose subscription lost its server is tried again after this
# results a merged subscription holds for a reader that falls behind; past it the oldest go (best-effort, as
# Redis's output buffer limit would cut a slow subscriber), counted in ``dropped`` and warned of
MAX_BUFFERED = 10_000


class PumpFailed(RuntimeError):
    """A shard's subscription stopped on an error other than a lost connection: raised to the reader."""


def offer(arrived: queue.Queue | asyncio.Queue, item: Any) -> int:
    """Put ``item``; when the buffer is full, drop the oldest first. How many were dropped."""
    dropped = 0
    while True:
        try:
            arrived.put_nowait(item)
            return dropped
        except (queue.Full, asyncio.QueueFull):
            with contextlib.suppress(queue.Empty, asyncio.QueueEmpty):
                arrived.get_nowait()
                dropped += 1


def warn_dropped(before: int, after: int) -> None:
    """One warning at the first result dropped, then one per ``MAX_BUFFERED`` more."""
    if before == 0 or before // MAX_BUFFERED != after // MAX_BUFFERED:
        log.warning("the results reader is behind: %d result(s) dropped (best-effort)", after)


def decode_message(message: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pub/sub message's result map; None for anything else (subscribe notices, foreign messages)."""
    if message is None or message.get("type") != "message":
        return None
    try:
        return validate_result(loads(message["data"]))
    except (SerializationError, ProtocolError) as exc:
        log.warning("ignoring a message on the results channel that is not a result: %s", exc)
        return None


class Subscription:
    """Results published on the channel of one server, as they arrive (``get``, iteration, ``with``)."""

    def __init__(self, connection: redis.Redis, channel: str) -> None:
        self._pubsub = connection.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        # Wait for the subscription to be confirmed so that nothing published after we return is missed.
        self._pubsub.get_message(timeout=5.0, ignore_subscribe_messages=False)

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next result, or None when none came within ``timeout`` seconds. While the server is away it
        waits (the next read connects and subscribes again: what was published meanwhile is missed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 3600.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                result = decode_message(self._pubsub.get_message(timeout=left))
            except redis.AuthenticationError:
                raise
            except (redis.ConnectionError, redis.TimeoutError):
                result = None
                time.sleep(min(AWAY_WAIT_S, left))
            if result is not None:
                return result
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            result = self.get(timeout=None)
            if result is not None:
                yield result

    def close(self) -> None:
        """Unsubscribe and close the connection."""
        self._pubsub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MergedSubscription(Subscription):
    """The channel of every shard: one subscription and one thread per shard; ``get`` returns whichever
    result came first."""

    def __init__(self, subs: list[Subscription]) -> None:  # no pubsub of its own: it merges the shards'
        self.subs, self.arrived = subs, queue.Queue(MAX_BUFFERED)
        self.stopping, self.dropped, self.lock = threading.Event(), 0, threading.Lock()
        self.failure: PumpFailed | None = None  # a shard's pump that stopped: raised once the buffer is read
        self.threads = [threading.Thread(target=self._pump, args=(s,), daemon=True) for s in subs]
        for thread in self.threads:
            thread.start()

    def _pump(self, sub: Subscription) -> None:
        while not self.stopping.is_set():
            try:
                result = sub.get(timeout=0.2)
            except (redis.ConnectionError, redis.TimeoutError):
                self.stopping.wait(AWAY_WAIT_S)  # that shard is away; the others go on
                continue
            except Exception as exc:  # the reader must hear of it, not wait for ever on a dead pump
                self.failure = PumpFailed(f"a shard's subscription stopped: {exc!r}")
                return
            if result is not None:
                self._count_dropped(offer(self.arrived, result))

    def _count_dropped(self, count: int) -> None:
        if count:
            with self.lock:
                before, self.dropped = self.dropped, self.dropped + count
            warn_dropped(before, before + count)

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.arrived.get_nowait()
            except queue.Empty:
                if self.failure is not None:  # what came before it was read first
                    raise self.failure from None
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                return None
            try:
                return self.arrived.get(timeout=left)
            except queue.Empty:
                continue

    def close(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=2)
        for sub in self.subs:
            sub.close()


def subscribe(connections: Sequence[redis.Redis], channel: str) -> Subscription:
    """Subscribe now on every shard; the returned object yields results."""
    subs = [Subscription(conn, channel) for conn in connections]
    return subs[0] if len(subs) == 1 else MergedSubscription(subs)


class AsyncSubscription:
    """Results published on the channel of every shard (asyncio; one pump task per shard, merged).

    ``sub = await producer.subscribe()`` subscribes before it returns, so nothing published afterwards is
    missed; ``async for result in sub`` (also straight on ``producer.subscribe()``, which then subscribes at
    the first read), ``await sub.get(timeout)`` (None when nothing came), ``async with``. ``aclose()``, or the
    producer's ``close()``, ends it."""

    def __init__(self, connections: Sequence[aioredis.Redis], channel: str) -> None:
        self._connections, self._channel = list(connections), channel
        self._pubsubs: list[Any] = []
        self._pumps: list[asyncio.Task] = []
        self._arrived: asyncio.Queue[dict[str, Any]] | None = None
        self._failures: list[PumpFailed] = []  # a shard's pump that stopped: raised once the buffer is read
        self.closed = False

    async def open(self) -> AsyncSubscription:
        """Subscribe on every shard and wait for each to confirm (once; a closed subscription stays closed)."""
        if self._arrived is not None or self.closed:
            return self
        pubsubs = [conn.pubsub(ignore_subscribe_messages=True) for conn in self._connections]
        try:
            for pubsub in pubsubs:
                await pubsub.subscribe(self._channel)
                await pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)  # the confirmation
        except BaseException:  # a shard away: nothing half-open stays behind; a later open tries again
            for pubsub in pubsubs:
                with contextlib.suppress(redis.RedisError, OSError):
                    await pubsub.aclose()
            raise
        arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_BUFFERED)
        self._pumps = [asyncio.create_task(_pump(p, arrived, self._failures)) for p in pubsubs]
        self._pubsubs, self._arrived = pubsubs, arrived
        return self

    def __await__(self) -> Any:
        return self.open().__await__()

    async def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next result, or None when none came within ``timeout`` seconds (or the subscription is closed)."""
        await self.open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.closed and self._arrived is not None:
            if self._failures and self._arrived.empty():
                raise self._failures[0]
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                return None
            with contextlib.suppress(asyncio.TimeoutError):
                return await asyncio.wait_for(self._arrived.get(), left)
        return None

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        result = await self.get()
        if result is None:  # closed
            raise StopAsyncIteration
        return result

    async def aclose(self) -> None:
        """Stop the pumps, unsubscribe and give the connections back."""
        self.closed = True
        pumps, pubsubs, self._pumps, self._pubsubs = self._pumps, self._pubsubs, [], []
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for pubsub in pubsubs:
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()

    async def __aenter__(self) -> AsyncSubscription:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _pump(pubsub: Any, arrived: asyncio.Queue[dict[str, Any]], failures: list[PumpFailed]) -> None:
    dropped = 0
    while True:
        try:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=AWAY_WAIT_S)
        except (redis.ConnectionError, redis.TimeoutError):
            await asyncio.sleep(AWAY_WAIT_S)  # that shard is away; the others go on
            continue
        except Exception as exc:  # the reader must hear of it, not wait for ever on a dead pump
            failures.append(PumpFailed(f"a shard's subscription stopped: {exc!r}"))
            return
        result = decode_message(message)
        count = offer(arrived, result) if result is not None else 0
        if count:
            warn_dropped(dropped, dropped + count)
            dropped += count
