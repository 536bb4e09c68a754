"""The store's script calls, each declared once: one frozen dataclass per script (``lua/<script>.lua``).

A call's field order is the wire order. Fields made with ``key()`` travel in ``KEYS``, the others in
``ARGV``; a field made with ``key(many=True)`` or ``tail()`` (always the last of its kind) is a
variable-length tail whose items are flattened in turn (with ``each=``, items that are themselves named
tuples, as FINISH's per-job values, flattened in their own field order). ``wire()`` is the one function
that turns a call into ``KEYS`` and ``ARGV``. Each ``.lua`` file declares the same names in its header
(``-- KEYS:``, ``-- ARGV:``, ``-- ARGV per job:``) and binds them in that order;
tests/contract/test_scripts.py fails when a header, a binding and a dataclass disagree.

Keys a script knows before it runs travel in ``KEYS``: the queue, its lists and registries, this
worker's keys, the results feed. The keys of each job (``rq:job:<id>``, its results, executions and
dependents), other workers' keys, the ``seen`` marks and the result cache's entries are known only once
the script has popped or scanned the ids (or per job), so the script computes them from prefixes and
suffixes passed in ``ARGV`` (each taken from ``producer.wire.keys``). So these scripts are not Redis
Cluster-safe yet: a Cluster (or a server that enforces declared keys) needs every key a script touches
in ``KEYS`` and in one hash slot, and RQ's key layout has no hash tags that would keep a queue's job keys
in its slot. ACL key patterns still hold: every key is under ``rq:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NamedTuple

Value = str | bytes | int | float


def key(*, many: bool = False) -> Any:
    """A field that travels in ``KEYS`` (``many``: a tail of keys)."""
    return field(metadata={"keys": True, "many": many})


def tail(*, each: type[tuple] | None = None) -> Any:
    """The ``ARGV`` tail: every item in turn (``each``: the ``NamedTuple`` each item is, flattened in its
    fields' order)."""
    return field(metadata={"keys": False, "many": True, "each": each})


def wire(call: Any) -> tuple[list[Value], list[Value]]:
    """``KEYS`` and ``ARGV`` of a script call, in its fields' order."""
    keys: list[Value] = []
    argv: list[Value] = []
    for f in fields(call):
        out = keys if f.metadata.get("keys") else argv
        value = getattr(call, f.name)
        if not f.metadata.get("many"):
            out.append(value)
        elif f.metadata.get("each"):
            for item in value:
                out.extend(item)
        else:
            out.extend(value)
    return keys, argv


@dataclass(frozen=True)
class Take:
    """TAKE: start up to ``max_jobs`` jobs, the ``ids`` a blocking move already took first."""

    script: ClassVar[str] = "take"
    queue: str = key()
    intermediate: str = key()
    wip: str = key()
    worker_key: str = key()
    worker_executions: str = key()
    stream: str = key()
    worker_name: str
    started_ttl_s: int
    worker_ttl_s: int
    seen_prefix: str
    job_prefix: str
    execution_prefix: str
    executions_prefix: str
    results_prefix: str
    max_jobs: int
    execution_base: str
    channel: str
    stream_maxlen: int
    gone_size: int  # the job_gone result's template (``producer.wire.results.script_template``)
    gone_pairs: bytes
    ids: tuple[bytes | str, ...] = tail()


class FinishJob(NamedTuple):
    """FINISH's values for one job (a tuple: it is its own wire form, cheap to build per job). ``kind`` ok |
    fail | retry; ``payload`` the return value (ok) or RQ's ``exc_string`` (fail), base64; ``data`` the call
    without its image (ok); ``cache_key`` empty when the result is not cached; ``lean_message`` and
    ``lean_payload``: the result with ``meta`` nil, written instead on a nearly full Redis (the meta then stays
    in the job's data only), empty for a small meta. What a kind does not use is empty."""

    kind: str
    job_id: str
    execution_id: str
    ttl_s: int
    started_at: float
    message: bytes = b""
    payload: bytes = b""
    data: bytes = b""
    retries_left: int = 0
    cache_key: str = ""
    cache_value: bytes = b""
    lean_message: bytes = b""
    lean_payload: bytes = b""


@dataclass(frozen=True)
class Finish:
    """FINISH: record every job's end and announce every final result."""

    script: ClassVar[str] = "finish"
    wip: str = key()
    worker_key: str = key()
    worker_executions: str = key()
    queue: str = key()
    queues: str = key()
    finished: str = key()
    failed: str = key()
    stream: str = key()
    worker_name: str
    channel: str
    first_start: float
    job_prefix: str
    dependents_prefix: str
    dependents_suffix: str
    dependencies_prefix: str
    dependencies_suffix: str
    execution_prefix: str
    executions_prefix: str
    results_prefix: str
    stream_maxlen: int
    canceled_size: int  # the canceled result's template
    canceled_pairs: bytes
    canceled_exc: bytes
    cache_ttl_s: int
    jobs: tuple[FinishJob, ...] = tail(each=FinishJob)


@dataclass(frozen=True)
class Reap:
    """REAP: give back dead workers' jobs and stranded ids; fail jobs lost too often as poison."""

    script: ClassVar[str] = "reap"
    wip: str = key()
    queue: str = key()
    intermediate: str = key()
    failed: str = key()
    stream: str = key()
    finished: str = key()
    execution_prefix: str
    executions_prefix: str
    worker_prefix: str
    worker_executions_prefix: str
    worker_executions_suffix: str
    job_prefix: str
    seen_prefix: str
    results_prefix: str
    stranded_s: float
    max_deliveries: int
    poison_exc: bytes
    failure_ttl_s: int
    channel: str
    stream_maxlen: int
    poison_size: int  # the poison result's template
    poison_pairs: bytes
    only_worker: str = ""  # a name's takeover: only the executions that name this worker (and no stranded id)


@dataclass(frozen=True)
class GiveBack:
    """GIVE_BACK: re-queue this worker's starts that it does not hold (``held``: the executions it does)."""

    script: ClassVar[str] = "give_back"
    wip: str = key()
    worker_executions: str = key()
    queue: str = key()
    execution_prefix: str
    job_prefix: str
    min_age_s: float
    worker_name: str
    full: int  # 1: also the started registry's executions that name this worker (its set may have expired)
    held: tuple[str, ...] = tail()


@dataclass(frozen=True)
class Register:
    """REGISTER: RQ's ``register_birth``; ``fields`` are name, value pairs."""

    script: ClassVar[str] = "register"
    worker_key: str = key()
    sets: tuple[str, ...] = key(many=True)
    ttl_s: int
    fields: tuple[Value, ...] = tail()


@dataclass(frozen=True)
class Heartbeat:
    """HEARTBEAT: keep the worker alive another TTL, set ``fields`` (name, value pairs); reply with the backlog."""

    script: ClassVar[str] = "heartbeat"
    worker_key: str = key()
    worker_executions: str = key()
    queue: str = key()
    ttl_s: int
    fields: tuple[Value, ...] = tail()


@dataclass(frozen=True)
class Announce:
    """ANNOUNCE: set each queue's announcement to ``value`` unless it names a model begun later than ``since``."""

    script: ClassVar[str] = "announce"
    keys: tuple[str, ...] = key(many=True)
    value: bytes
    since: float


CALLS = (Take, Finish, Reap, GiveBack, Register, Heartbeat, Announce)
