"""The Redis operations the producer's logic asks for, and what a procedure is (no I/O here).

A procedure is a generator: it yields one operation at a time; a driver (``producer.drivers``, on
redis-py's sync or asyncio client) performs it on the shard named and sends the reply back, or
throws the Redis error in. So the logic (checks, routing, retries, deadlines) is written once, in
``producer.core`` and the modules it uses, and each front end only says how to send.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Command(NamedTuple):
    """A Redis command as redis-py's ``execute_command`` takes it (``options`` steer its reply parsing; never
    mutated). A tuple, not a frozen dataclass: an enqueue builds several per job, and a tuple is built in a
    tenth of the time (this is on the producer's per-job path)."""

    args: tuple[Any, ...]
    options: Mapping[str, Any] = MappingProxyType({})


def command(*args: Any) -> Command:
    """``command("GET", key)``."""
    return Command(args)


@dataclass(frozen=True)
class Call:
    """One command on one shard; the reply is sent back."""

    shard: int
    command: Command


def call(shard: int, *args: Any) -> Call:
    """``call(0, "GET", key)``."""
    return Call(shard, Command(args))


@dataclass(frozen=True)
class Batch:
    """Several commands on one shard in one round trip, not a transaction; their replies are sent back."""

    shard: int
    commands: tuple[Command, ...]


@dataclass(frozen=True)
class Watch:
    """WATCH ``keys`` on the shard's transaction connection, which the next ``Commit`` on that shard uses."""

    shard: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Commit:
    """MULTI, the commands, EXEC on the shard: True is sent back, or False when a watched key changed. With
    ``wait`` (replicas, timeout ms), ``WAIT`` follows on the same connection, and the number of replicas that
    acknowledged the write is sent back instead of True."""

    shard: int
    commands: tuple[Command, ...]
    wait: tuple[int, int] | None = None


@dataclass(frozen=True)
class Sleep:
    """Wait (Redis is away, and a retry is due later)."""

    seconds: float


@dataclass(frozen=True)
class Offload:
    """Work of the procedure's own that may take a while (reading image files, hashing or packing large images):
    its return value is sent back, or its exception thrown in. A sync driver runs it in place; the asyncio
    driver in a thread (``asyncio.to_thread``), so that the event loop serves other requests meanwhile."""

    work: Callable[[], Any]


Op = Call | Batch | Watch | Commit | Sleep | Offload
Procedure = Generator[Op, Any, T]


@dataclass(frozen=True)
class Done:
    """A procedure's return value."""

    value: Any


def advance(procedure: Procedure[Any], reply: Any, error: BaseException | None) -> Op | Done:
    """Send a reply (or throw an error) into ``procedure``: its next operation, or ``Done`` with its value."""
    try:
        return procedure.send(reply) if error is None else procedure.throw(error)
    except StopIteration as stop:
        return Done(stop.value)
