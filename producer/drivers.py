"""Drivers: perform a procedure's operations (``producer.ops``) on redis-py's sync or asyncio clients.

The only I/O of the producer's logic. Each operation names its shard; a Redis error is thrown back
into the procedure, which decides (retry, wait, wrap, or let it rise). A ``Watch`` holds a
transaction connection of its shard until that shard's ``Commit`` (or the end of the procedure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from .ops import Batch, Call, Commit, Done, Offload, Op, Procedure, Sleep, Watch, advance

T = TypeVar("T")


class SyncDriver:
    """Runs procedures on synchronous clients, one per shard (index = shard)."""

    def __init__(self, connections: Sequence[redis.Redis]) -> None:
        self.connections = list(connections)

    def run(self, procedure: Procedure[T]) -> T:
        """Run ``procedure`` to its end; its return value."""
        watching: dict[int, Any] = {}
        try:
            op = advance(procedure, None, None)
            while not isinstance(op, Done):
                try:
                    reply, error = self._perform(op, watching), None
                except redis.RedisError as exc:
                    reply, error = None, exc
                except Exception as exc:  # the procedure's own work (Offload) raised: its error, as if run there
                    if not isinstance(op, Offload):
                        raise
                    reply, error = None, exc
                op = advance(procedure, reply, error)
            return op.value
        finally:
            procedure.close()
            for pipe in watching.values():
                pipe.reset()

    def _perform(self, op: Op, watching: dict[int, Any]) -> Any:
        if isinstance(op, Commit):  # the enqueue's one operation, most often
            return self._commit(op, watching)
        if isinstance(op, Offload):
            return op.work()
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        conn = self.connections[op.shard]
        if isinstance(op, Call):
            return conn.execute_command(*op.command.args, **op.command.options)
        if isinstance(op, Batch):
            with conn.pipeline(transaction=False) as pipe:
                for cmd in op.commands:
                    pipe.execute_command(*cmd.args, **cmd.options)
                return pipe.execute()
        if isinstance(op, Watch):
            watching.setdefault(op.shard, conn.pipeline()).watch(*op.keys)
            return None
        raise TypeError(f"not an operation: {op!r}")

    def _commit(self, op: Commit, watching: dict[int, Any]) -> Any:
        pipe = watching.pop(op.shard, None) or self.connections[op.shard].pipeline()
        try:
            if op.wait is not None:
                return commit_and_wait(pipe, op)
            pipe.multi()
            for cmd in op.commands:
                pipe.execute_command(*cmd.args, **cmd.options)
            pipe.execute()
            return True
        except redis.WatchError:
            return False
        finally:
            pipe.reset()


def commit_and_wait(pipe: Any, op: Commit) -> int | bool:
    """MULTI/EXEC, then ``WAIT`` on the very connection that wrote (WAIT counts the replicas that have this
    client's writes, so it must not go through the pool): the replicas that acknowledged, or False when a
    watched key changed. A transaction pipeline gives its connection back at EXEC, hence by hand here."""
    conn = pipe.connection or pipe.connection_pool.get_connection()
    pipe.connection = conn  # the pipeline's reset() gives it back to the pool
    try:
        for args in (("MULTI",), *(cmd.args for cmd in op.commands)):
            _send(conn, *args)
        replies = _send(conn, "EXEC")
        if replies is None:
            return False
        _raise_first_error(replies)
        return int(_send(conn, "WAIT", *op.wait))
    except BaseException:
        conn.disconnect()  # a half-sent transaction must never go back to the pool
        raise


def _raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply


def _send(conn: Any, *args: Any) -> Any:
    conn.send_command(*args)
    return conn.read_response()


class AsyncDriver:
    """Runs procedures on asyncio clients, one per shard (index = shard)."""

    def __init__(self, connections: Sequence[aioredis.Redis]) -> None:
        self.connections = list(connections)

    async def run(self, procedure: Procedure[T]) -> T:
        """Run ``procedure`` to its end; its return value."""
        watching: dict[int, Any] = {}
        try:
            op = advance(procedure, None, None)
            while not isinstance(op, Done):
                try:
                    reply, error = await self._perform(op, watching), None
                except redis.RedisError as exc:
                    reply, error = None, exc
                except Exception as exc:  # the procedure's own work (Offload) raised: its error, as if run there
                    if not isinstance(op, Offload):
                        raise
                    reply, error = None, exc
                op = advance(procedure, reply, error)
            return op.value
        finally:
            procedure.close()
            for pipe in watching.values():
                await pipe.reset()

    async def _perform(self, op: Op, watching: dict[int, Any]) -> Any:
        if isinstance(op, Offload):
            return await asyncio.to_thread(op.work)
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        conn = self.connections[op.shard]
        if isinstance(op, Call):
            return await conn.execute_command(*op.command.args, **op.command.options)
        if isinstance(op, Batch):
            async with conn.pipeline(transaction=False) as pipe:
                for cmd in op.commands:
                    pipe.execute_command(*cmd.args, **cmd.options)
                return await pipe.execute()
        if isinstance(op, Watch):
            await watching.setdefault(op.shard, conn.pipeline()).watch(*op.keys)
            return None
        assert isinstance(op, Commit)
        pipe = watching.pop(op.shard, None) or conn.pipeline()
        try:
            if op.wait is not None:
                return await commit_and_wait_async(pipe, op)
            pipe.multi()
            for cmd in op.commands:
                pipe.execute_command(*cmd.args, **cmd.options)
            await pipe.execute()
            return True
        except redis.WatchError:
            return False
        finally:
            await pipe.reset()

    async def close(self) -> None:
        """Close every client (each, whatever another's close raised: the first error is raised after)."""
        errors = [e for e in await asyncio.gather(*(c.aclose() for c in self.connections), return_exceptions=True) if e]
        if errors:
            raise errors[0]


async def commit_and_wait_async(pipe: Any, op: Commit) -> int | bool:
    """The asyncio twin of ``commit_and_wait``."""
    conn = pipe.connection or await pipe.connection_pool.get_connection()
    pipe.connection = conn
    try:
        for args in (("MULTI",), *(cmd.args for cmd in op.commands)):
            await conn.send_command(*args)
            await conn.read_response()
        await conn.send_command("EXEC")
        replies = await conn.read_response()
        if replies is None:
            return False
        _raise_first_error(replies)
        await conn.send_command("WAIT", *op.wait)
        return int(await conn.read_response())
    except BaseException:
        await conn.disconnect()
        raise
