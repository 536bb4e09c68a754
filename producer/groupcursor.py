"""The consumer-group protocol of the results feed, without I/O: which command to send next and what
each reply means (own pending entries, XAUTOCLAIM sweeps, new entries), and reading an entry's result.

``producer.feed`` runs it on a sync or asyncio Redis client; the unit tests run it on replies alone.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from .connections import MAX_WAIT_MS
from .wire.jobs import ProtocolError
from .wire.results import validate_result
from .wire.serializer import SerializationError, loads

log = logging.getLogger(__name__)

DEFAULT_BLOCK_MS = 1000  # under a client's socket timeout (redis-py's is often set to 5 s)
DEFAULT_COUNT = 10
MIN_SWEEP_S = 0.05
CREATE, OWN, CLAIM, NEW = "create", "own", "claim", "new"


@dataclass(frozen=True)
class Entry:
    """One stream entry: its id, and its result map, or None when it was deleted or is malformed."""

    id: str
    result: dict[str, Any] | None


def default_consumer() -> str:
    """``host:pid``: distinct for every process of a group."""
    return f"{socket.gethostname()}:{os.getpid()}"


def text(value: Any) -> str:
    """A reply value as text (ids and names come back as bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_entry(entry_id: Any, fields: Any) -> Entry:
    """An entry's result, checked; None (logged) for a deleted entry (no fields) or a malformed one."""
    entry_id = text(entry_id)
    if not fields:
        log.debug("feed entry %s was deleted; acknowledging it", entry_id)
        return Entry(entry_id, None)
    if isinstance(fields, list | tuple):  # a raw flat [name, value, ...] reply
        fields = dict(zip(fields[::2], fields[1::2], strict=False))
    payload = fields.get(b"result", fields.get("result"))
    try:
        if not isinstance(payload, bytes):
            raise ProtocolError(f"its 'result' field is {type(payload).__name__}, not msgpack bytes")
        return Entry(entry_id, validate_result(loads(payload)))
    except (SerializationError, ProtocolError) as exc:
        log.warning("skipping feed entry %s, which is not a result: %s", entry_id, exc)
        return Entry(entry_id, None)


def read_reply_entries(reply: Any) -> list[tuple[Any, Any]]:
    """``(id, fields)`` pairs of an XREADGROUP reply on one stream: RESP2's ``[[stream, entries]]`` or
    the ``{stream: entries}`` map of newer clients; nothing for a nil or empty reply."""
    if not reply:
        return []
    pairs = reply.values() if isinstance(reply, dict) else (entries for _stream, entries in reply)
    return [(entry[0], entry[1]) for entries in pairs for entry in entries or []]


def autoclaim_reply(reply: Any) -> tuple[str, list[tuple[Any, Any]], int, list[Any]]:
    """XAUTOCLAIM's reply as ``(next id, claimed (id, fields) pairs, entries claimed but deleted, deleted ids)``.

    Redis 6.2 answers ``[next, entries]``, with a nil in place of each deleted entry (claimed into our
    pending list, id unknown); 7.0+ answers ``[next, entries, deleted ids]`` and drops those itself.
    """
    next_id, raw = text(reply[0]), reply[1] or []
    deleted_ids = list(reply[2]) if len(reply) > 2 and reply[2] else []
    claimed = [(entry[0], entry[1]) for entry in raw if entry is not None and entry[0] is not None]
    return next_id, claimed, len(raw) - len(claimed), deleted_ids


class GroupCursor:
    """What a consumer of the group asks Redis next, and what the replies mean. No I/O.

    Phases: create the group (MKSTREAM at ``start``; an existing group is kept) -> own pending entries
    from id 0 -> a claim sweep (XAUTOCLAIM over the group's pending list, entries idle longer than
    ``claim_idle_s``) -> new entries (``>``, blocking), with a sweep again every ``claim_idle_s / 2``.
    """

    def __init__(
        self,
        stream: str,
        group: str,
        consumer: str,
        *,
        start: str = "$",
        claim_idle_s: float = 30,
        block_ms: int = DEFAULT_BLOCK_MS,
        count: int = DEFAULT_COUNT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if claim_idle_s < 0 or not 1 <= block_ms <= MAX_WAIT_MS or count < 1:  # longer: cut by the socket timeout
            raise ValueError(f"claim_idle_s must be >= 0, block_ms 1..{MAX_WAIT_MS}, count >= 1")
        self.stream, self.group, self.consumer, self.start = stream, group, consumer, start
        self.claim_idle_ms, self.block_ms, self.count, self.clock = int(claim_idle_s * 1000), block_ms, count, clock
        self.sweep_every_s = max(claim_idle_s / 2, MIN_SWEEP_S)
        self.phase, self.own_from, self.claim_from = CREATE, "0", "0-0"
        self.next_sweep = clock()  # due at once, after our own pending entries
        self.reread_own = False

    def next_command(self, max_block_ms: int | None = None) -> tuple[Any, ...]:
        """The command to send now; a blocking read waits at most ``max_block_ms`` and until the next sweep."""
        now = self.clock()
        if self.phase == NEW and now >= self.next_sweep:
            self.phase, self.claim_from = CLAIM, "0-0"
        group = ("GROUP", self.group, self.consumer, "COUNT", self.count)
        if self.phase == CREATE:
            return ("XGROUP", "CREATE", self.stream, self.group, self.start, "MKSTREAM")
        if self.phase == OWN:
            return ("XREADGROUP", *group, "STREAMS", self.stream, self.own_from)
        if self.phase == CLAIM:
            return (
                "XAUTOCLAIM",
                self.stream,
                self.group,
                self.consumer,
                self.claim_idle_ms,
                self.claim_from,
                "COUNT",
                self.count,
            )
        block = min(self.block_ms, math.ceil((self.next_sweep - now) * 1000), max_block_ms or self.block_ms)
        return ("XREADGROUP", *group, "BLOCK", max(1, block), "STREAMS", self.stream, ">")

    def take(self, reply: Any) -> list[Entry]:
        """The entries in the reply to the last ``next_command``, in order; moves to the next phase."""
        if self.phase == CREATE:
            self.phase = OWN
            return []
        if self.phase == CLAIM:
            return self._take_claim(reply)
        raw = read_reply_entries(reply)
        if self.phase == OWN:
            if not raw:  # our own pending list is delivered
                self.phase = CLAIM if self.clock() >= self.next_sweep else NEW
                self.claim_from = "0-0"
            else:
                self.own_from = text(raw[-1][0])
        return [decode_entry(entry_id, fields) for entry_id, fields in raw]

    def _take_claim(self, reply: Any) -> list[Entry]:
        self.claim_from, claimed, nils, _deleted = autoclaim_reply(reply)
        # Redis 6.2 claimed deleted entries without naming them: our pending list names them, with no fields.
        self.reread_own = self.reread_own or nils > 0
        if self.claim_from == "0-0":  # the sweep went through the whole pending list
            self.next_sweep = self.clock() + self.sweep_every_s
            self.phase = OWN if self.reread_own else NEW
            self.own_from, self.reread_own = "0", False
        return [decode_entry(entry_id, fields) for entry_id, fields in claimed]

    def failed(self, exc: redis.ResponseError) -> bool:
        """Whether an error reply is part of the protocol (then go on), not a fault to raise."""
        message = str(exc)
        if self.phase == CREATE and message.startswith("BUSYGROUP"):
            self.phase = OWN  # the group exists: keep its position
            return True
        if message.startswith("NOGROUP"):  # the stream or group was deleted (a flush, a restart without data)
            # again from the stream's start, not from ``start`` ($: its end): what workers fed since the loss
            # (while this consumer backed off) is delivered; an intact stream's older entries come again
            # (duplicates are allowed, losses are not; an entry id after the last one delivered would miss
            # the entries of a stream re-created within that millisecond, or by a host whose clock is behind)
            self.start = "0"
            log.warning(
                "feed group %s on %s is gone; creating it again from the stream's start", self.group, self.stream
            )
            self.phase, self.own_from = CREATE, "0"
            return True
        return False
