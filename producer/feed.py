"""The durable results feed: reading ``<queue>:results:stream`` through a Redis consumer group.

Workers append every final result to the stream in their atomic finish (fields ``job_id`` and
``result``, the msgpack result map), trimmed to about ``--results-maxlen`` entries. A reader creates
its group if needed, re-delivers its own pending entries first (a restart under the same consumer
name), claims the entries other consumers left idle longer than ``claim_idle_s`` (XAUTOCLAIM), then
reads new ones, sweeping for idle entries again every ``claim_idle_s / 2`` (the protocol is
``producer.groupcursor``). With several shards the same group is read on each shard's feed, in turn.

``FeedReader`` holds the reading state once, as procedures (``producer.ops``); ``ResultFeed`` and
``AsyncResultFeed`` run it on a sync or an asyncio client. ``group_lags`` and ``feed_info`` only
read, for ``producer status`` and metrics.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import redis

from .core import cut_off
from .drivers import AsyncDriver, SyncDriver
from .groupcursor import CREATE, Entry, GroupCursor
from .ops import Call, Command, Procedure, Sleep, call
from .results import with_meta
from .wire.feed import group_rows
from .wire.keys import results_stream

log = logging.getLogger(__name__)

MAX_RETRY_S = 2.0
TURN_S = 0.05  # with several shards: how long one shard's feed is waited on before the next one's turn
CAP_NOTE = "trimmed at ~maxlen set on the workers (--results-maxlen)"
_RETRIED = (redis.ConnectionError, redis.TimeoutError)


def _retried(exc: redis.RedisError) -> bool:
    """An error the feed waits out: Redis unreachable, or a primary mid-failover (``READONLY``) or cut off from
    its replicas (``NOREPLICAS``): nothing was read or acknowledged."""
    return isinstance(exc, _RETRIED) or (isinstance(exc, redis.ResponseError) and cut_off(exc))


class Retry:
    """Capped exponential back-off while Redis is unreachable (one warning per outage)."""

    def __init__(self) -> None:
        self.delay_s = 0.0

    def failed(self, exc: Exception) -> float:
        if not self.delay_s:
            log.warning("results feed: Redis unreachable (%s); retrying", exc)
        self.delay_s = min(MAX_RETRY_S, self.delay_s * 2 or 0.1)
        return self.delay_s

    def wrong_type(self, stream: str, exc: Exception) -> float:
        """The feed's key is not a stream (another client made it a list, a hash...): wait, once warned."""
        if not self.delay_s:
            log.warning(
                "results feed: %s is not a stream (%s); delete it (RELIABILITY.md, 'Keys of the wrong type'); retrying",
                stream,
                exc,
            )
        self.delay_s = min(MAX_RETRY_S, self.delay_s * 2 or 0.1)
        return self.delay_s

    def reset(self) -> None:
        self.delay_s = 0.0


def _left_ms(deadline: float | None) -> int | None:
    return None if deadline is None else int((deadline - time.monotonic()) * 1000)


class ShardReader:
    """One shard's feed read through the group: entries read ahead, and the one handed out but not acknowledged."""

    def __init__(self, shard: int, cursor: GroupCursor) -> None:
        self.shard, self.cursor = shard, cursor
        self.ready: deque[Entry] = deque()
        self.staged: list[Entry] = []  # read, their meta still to fetch
        self.unacked: str | None = None
        self.retry = Retry()

    def open(self) -> Procedure[None]:
        """Create the group if it does not exist."""
        if self.cursor.phase == CREATE:
            try:
                self.cursor.take((yield Call(self.shard, Command(self.cursor.next_command()))))
            except redis.AuthenticationError:
                raise
            except redis.RedisError as exc:
                if _retried(exc):  # that shard is away: its group is created by its first read
                    log.warning(
                        "results feed: shard %d unreachable (%s); its group is created once it answers", self.shard, exc
                    )
                elif not isinstance(exc, redis.ResponseError):
                    raise
                elif str(exc).startswith("WRONGTYPE"):
                    self.retry.wrong_type(self.cursor.stream, exc)  # the group is created by a later read
                elif not self.cursor.failed(exc):
                    raise

    def ack(self) -> Procedure[None]:
        """Acknowledge the entry handed out last."""
        entry_id, self.unacked = self.unacked, None
        if entry_id is not None:
            yield from self._ack(entry_id)

    def next(self, deadline: float | None) -> Procedure[dict[str, Any] | None]:
        """The next result (kept unacknowledged), or None at ``deadline`` (monotonic; None: no deadline)."""
        while not self.ready:
            left_ms = _left_ms(deadline)
            if left_ms is not None and left_ms <= 0:
                return None
            yield from self._fill(left_ms)
        entry = self.ready.popleft()
        self.unacked = entry.id
        return entry.result

    def _ack(self, entry_id: str) -> Procedure[None]:
        try:
            yield call(self.shard, "XACK", self.cursor.stream, self.cursor.group, entry_id)
        except redis.RedisError as exc:  # it stays pending: a sweep claims it again
            if not _retried(exc):
                raise
            log.warning("could not acknowledge feed entry %s (%s); it will be delivered again", entry_id, exc)

    def _fill(self, max_block_ms: int | None) -> Procedure[None]:
        if self.staged:  # read before, their meta not fetched yet (Redis went away): that first
            yield from self._stage(self.staged, max_block_ms)
            return
        try:
            reply = yield Call(self.shard, Command(self.cursor.next_command(max_block_ms)))
        except redis.AuthenticationError:
            raise
        except _RETRIED as exc:
            yield Sleep(min(self.retry.failed(exc), (max_block_ms or 10**9) / 1000))
            return
        except redis.ResponseError as exc:
            if cut_off(exc):  # a demoted primary (the connection is dropped: the next try goes where it leads now)
                yield Sleep(min(self.retry.failed(exc), (max_block_ms or 10**9) / 1000))
                return
            if str(exc).startswith("WRONGTYPE"):
                yield Sleep(min(self.retry.wrong_type(self.cursor.stream, exc), (max_block_ms or 10**9) / 1000))
                return
            if self.cursor.failed(exc):
                return
            raise
        self.retry.reset()
        yield from self._stage(self.cursor.take(reply), max_block_ms)

    def _stage(self, entries: list[Entry], max_block_ms: int | None) -> Procedure[None]:
        """Give read entries their meta, then make them ready; while Redis is away they stay staged (read, not
        acknowledged, none handed out without its meta) and the caller's deadline still holds."""
        try:
            yield from with_meta(self.shard, [entry.result for entry in entries if entry.result is not None])
        except redis.RedisError as exc:
            if not _retried(exc):
                raise
            self.staged = entries
            yield Sleep(min(self.retry.failed(exc), (max_block_ms or 10**9) / 1000))
            return
        self.staged = []
        self.retry.reset()
        for entry in entries:
            if entry.result is None:
                yield from self._ack(entry.id)  # deleted or malformed: never delivered, never again
            else:
                self.ready.append(entry)


class FeedReader:
    """The group's results across every shard's feed, at least once: the result last returned is
    acknowledged when the next one is asked for, or on ``ack()``."""

    def __init__(self, cursors: Sequence[GroupCursor]) -> None:
        self.shards = [ShardReader(shard, cursor) for shard, cursor in enumerate(cursors)]
        self._turn = 0

    def open(self) -> Procedure[None]:
        for reader in self.shards:
            yield from reader.open()

    def ack(self) -> Procedure[None]:
        for reader in self.shards:
            yield from reader.ack()

    def get(self, timeout_s: float | None) -> Procedure[dict[str, Any] | None]:
        """Acknowledge the previous result; the next one, or None if none came within ``timeout_s``."""
        yield from self.ack()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if len(self.shards) == 1:
            return (yield from self.shards[0].next(deadline))
        while True:  # each shard's feed in turn, a short wait on each
            for _ in self.shards:
                reader, self._turn = self.shards[self._turn], (self._turn + 1) % len(self.shards)
                turn_end = time.monotonic() + TURN_S
                result = yield from reader.next(turn_end if deadline is None else min(turn_end, deadline))
                if result is not None:
                    return result
            if deadline is not None and time.monotonic() >= deadline:
                return None


class _FeedView:
    """What both feeds show: the group, this consumer's name, and the cursor of each shard's feed."""

    def __init__(self, cursors: Sequence[GroupCursor]) -> None:
        self.cursors = list(cursors)
        self._reader = FeedReader(self.cursors)

    @property
    def cursor(self) -> GroupCursor:
        """The first shard's cursor (the group and consumer name are the same on every shard)."""
        return self.cursors[0]

    @property
    def group(self) -> str:
        return self.cursors[0].group

    @property
    def consumer(self) -> str:
        return self.cursors[0].consumer


class ResultFeed(_FeedView, Iterator[dict[str, Any]]):
    """Results from a consumer group of the feed, at least once: the entry last returned is
    acknowledged when the next one is asked for (``next``, ``get``) or on ``ack()``; an entry never
    acknowledged (the consumer died, or stopped iterating) is delivered again."""

    def __init__(self, driver: SyncDriver, cursors: Sequence[GroupCursor]) -> None:
        super().__init__(cursors)
        self._driver = driver

    def open(self) -> ResultFeed:
        """Create the group now if it does not exist (else the first read does); return the feed."""
        self._driver.run(self._reader.open())
        return self

    def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """Acknowledge the previous result; the next one, or None if none came within ``timeout_s``."""
        return self._driver.run(self._reader.get(timeout_s))

    def __next__(self) -> dict[str, Any]:
        result = self.get()
        assert result is not None  # without a timeout, get() returns only with a result
        return result

    def ack(self) -> None:
        """Acknowledge the result last returned now (it is not delivered again)."""
        self._driver.run(self._reader.ack())


class AsyncResultFeed(_FeedView, AsyncIterator[dict[str, Any]]):
    """``ResultFeed`` on asyncio (``async for``; ``await feed.get(timeout_s)``, ``await feed.ack()``)."""

    def __init__(self, driver: AsyncDriver, cursors: Sequence[GroupCursor]) -> None:
        super().__init__(cursors)
        self._driver = driver

    async def open(self) -> AsyncResultFeed:
        """Create the group now if it does not exist (else the first read does); return the feed."""
        await self._driver.run(self._reader.open())
        return self

    async def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """Acknowledge the previous result; the next one, or None if none came within ``timeout_s``."""
        return await self._driver.run(self._reader.get(timeout_s))

    async def __anext__(self) -> dict[str, Any]:
        result = await self.get()
        assert result is not None
        return result

    async def ack(self) -> None:
        """Acknowledge the result last returned now."""
        await self._driver.run(self._reader.ack())


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
    return {
        "stream": stream,
        "length": connection.xlen(stream),
        "cap": CAP_NOTE,
        "groups": groups_info(connection, queue),
    }
