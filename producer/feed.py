"""The durable results feed: reading ``<queue>:results:stream`` through a Redis consumer group.

Workers append every final result to the stream in their atomic finish (fields ``job_id`` and
``result``, the msgpack result map), trimmed to about ``--results-maxlen`` entries. A reader creates
its group if needed, re-delivers its own pending entries first (a restart under the same consumer
name), claims the entries other consumers left idle longer than ``claim_idle_s`` (XAUTOCLAIM), then
reads new ones, sweeping for idle entries again every ``claim_idle_s / 2`` (the protocol is
``producer.groupcursor``). ``ResultFeed`` and ``AsyncResultFeed`` run it on a sync or an asyncio
client; ``group_lags`` and ``feed_info`` only read, for ``producer status`` and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import redis

from .groupcursor import CREATE, Entry, GroupCursor
from .wire.feed import group_rows
from .wire.keys import results_stream

log = logging.getLogger(__name__)

MAX_RETRY_S = 2.0
CAP_NOTE = "trimmed at ~maxlen set on the workers (--results-maxlen)"


class Retry:
    """Capped exponential back-off while Redis is unreachable (one warning per outage)."""

    def __init__(self) -> None:
        self.delay_s = 0.0

    def failed(self, exc: Exception) -> float:
        if not self.delay_s:
            log.warning("results feed: Redis unreachable (%s); retrying", exc)
        self.delay_s = min(MAX_RETRY_S, self.delay_s * 2 or 0.1)
        return self.delay_s

    def reset(self) -> None:
        self.delay_s = 0.0


_RETRIED = (redis.ConnectionError, redis.TimeoutError)


def _deadline_ms(deadline: float | None) -> int | None:
    return None if deadline is None else int((deadline - time.monotonic()) * 1000)


class ResultFeed(Iterator[dict[str, Any]]):
    """Results from a consumer group of the feed, at least once: the entry last returned is
    acknowledged when the next one is asked for (``next``, ``get``) or on ``ack()``; an entry never
    acknowledged (the consumer died, or stopped iterating) is delivered again."""

    def __init__(self, connection: redis.Redis, cursor: GroupCursor) -> None:
        self.connection, self.cursor = connection, cursor
        self._ready: deque[Entry] = deque()
        self._unacked: str | None = None
        self._retry = Retry()

    def open(self) -> ResultFeed:
        """Create the group now if it does not exist (else the first read does); return the feed."""
        if self.cursor.phase == CREATE:
            try:
                self.cursor.take(self.connection.execute_command(*self.cursor.next_command()))
            except redis.ResponseError as exc:
                if not self.cursor.failed(exc):
                    raise
        return self

    def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """Acknowledge the previous result; the next one, or None if none came within ``timeout_s``."""
        self.ack()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._ready:
            left_ms = _deadline_ms(deadline)
            if left_ms is not None and left_ms <= 0:
                return None
            self._fill(left_ms)
        entry = self._ready.popleft()
        self._unacked = entry.id
        return entry.result

    def __next__(self) -> dict[str, Any]:
        result = self.get()
        assert result is not None  # without a timeout, get() returns only with a result
        return result

    def ack(self) -> None:
        """Acknowledge the result last returned now (it is not delivered again)."""
        entry_id, self._unacked = self._unacked, None
        if entry_id is not None:
            self._ack(entry_id)

    def _ack(self, entry_id: str) -> None:
        try:
            self.connection.xack(self.cursor.stream, self.cursor.group, entry_id)
        except _RETRIED as exc:  # it stays pending: a sweep claims it again
            log.warning("could not acknowledge feed entry %s (%s); it will be delivered again", entry_id, exc)

    def _fill(self, max_block_ms: int | None) -> None:
        try:
            reply = self.connection.execute_command(*self.cursor.next_command(max_block_ms))
        except redis.AuthenticationError:
            raise
        except _RETRIED as exc:
            time.sleep(min(self._retry.failed(exc), (max_block_ms or 10**9) / 1000))
            return
        except redis.ResponseError as exc:
            if self.cursor.failed(exc):
                return
            raise
        self._retry.reset()
        for entry in self.cursor.take(reply):
            if entry.result is None:
                self._ack(entry.id)  # deleted or malformed: never delivered, never again
            else:
                self._ready.append(entry)


class AsyncResultFeed(AsyncIterator[dict[str, Any]]):
    """The asyncio twin of ``ResultFeed`` (``async for``; ``await feed.get(timeout_s)``, ``await feed.ack()``)."""

    def __init__(self, connection: Any, cursor: GroupCursor) -> None:
        self.connection, self.cursor = connection, cursor
        self._ready: deque[Entry] = deque()
        self._unacked: str | None = None
        self._retry = Retry()

    async def open(self) -> AsyncResultFeed:
        """Create the group now if it does not exist (else the first read does); return the feed."""
        if self.cursor.phase == CREATE:
            try:
                self.cursor.take(await self.connection.execute_command(*self.cursor.next_command()))
            except redis.ResponseError as exc:
                if not self.cursor.failed(exc):
                    raise
        return self

    async def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """Acknowledge the previous result; the next one, or None if none came within ``timeout_s``."""
        await self.ack()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._ready:
            left_ms = _deadline_ms(deadline)
            if left_ms is not None and left_ms <= 0:
                return None
            await self._fill(left_ms)
        entry = self._ready.popleft()
        self._unacked = entry.id
        return entry.result

    async def __anext__(self) -> dict[str, Any]:
        result = await self.get()
        assert result is not None
        return result

    async def ack(self) -> None:
        """Acknowledge the result last returned now."""
        entry_id, self._unacked = self._unacked, None
        if entry_id is not None:
            await self._ack(entry_id)

    async def _ack(self, entry_id: str) -> None:
        try:
            await self.connection.xack(self.cursor.stream, self.cursor.group, entry_id)
        except _RETRIED as exc:
            log.warning("could not acknowledge feed entry %s (%s); it will be delivered again", entry_id, exc)

    async def _fill(self, max_block_ms: int | None) -> None:
        try:
            reply = await self.connection.execute_command(*self.cursor.next_command(max_block_ms))
        except redis.AuthenticationError:
            raise
        except _RETRIED as exc:
            await asyncio.sleep(min(self._retry.failed(exc), (max_block_ms or 10**9) / 1000))
            return
        except redis.ResponseError as exc:
            if self.cursor.failed(exc):
                return
            raise
        self._retry.reset()
        for entry in self.cursor.take(reply):
            if entry.result is None:
                await self._ack(entry.id)
            else:
                self._ready.append(entry)


def groups_info(connection: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """Each consumer group of the feed (XINFO GROUPS): name, consumers, pending, last delivered id,
    entries read and lag; ``lag`` is None on Redis < 7 (not reported) or when Redis cannot tell."""
    try:
        groups = connection.xinfo_groups(results_stream(queue))
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return []
        raise
    return group_rows(groups)


def group_lags(connection: redis.Redis, queue: str) -> dict[str, int | None]:
    """Entries each group has yet to read, by group name (None where Redis does not say: before 7.0)."""
    return {row["name"]: row["lag"] for row in groups_info(connection, queue)}


def feed_info(connection: redis.Redis, queue: str) -> dict[str, Any]:
    """The feed for ``producer status``: stream name, length, the cap's note, and every group."""
    stream = results_stream(queue)
    return {"stream": stream, "length": connection.xlen(stream), "cap": CAP_NOTE,
            "groups": groups_info(connection, queue)}  # fmt: skip
