"""The Lua scripts and the Python that calls them agree: each ``.lua`` header declares the KEYS and ARGV
names of its call's dataclass in the same order, the script binds them in that order, and each script
runs on real Redis (7 and 6.2) through its typed call."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from importlib.resources import files

import pytest
import redis

from producer import Producer
from producer.cancel import CancelCall
from producer.requeue_call import RequeueCall
from producer.scripts import load as producer_script
from producer.wire import keys
from worker.store.calls import CALLS, Finish, FinishJob, GiveBack, Register, key, tail, wire
from worker.store.rqcalls import QueueCalls, Setting
from worker.store.scripts import Scripts, lua

HEADER = re.compile(r"^-- (KEYS|ARGV|ARGV per job): (.*)$")


def header(text: str) -> dict[str, list[str]]:
    """The names a script declares: ``-- KEYS: a, b`` lines (a line ending with a comma goes on)."""
    found: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = HEADER.match(line)
        if match:
            current = match[1]
            found[current] = match[2]
        elif current and found[current].rstrip().endswith(",") and line.startswith("--"):
            found[current] += " " + line[2:].strip()
        else:
            current = None
    return {label: [name.strip() for name in names.split(",")] for label, names in found.items()}


def shape(call: type) -> dict[str, list[str]]:
    """The names a call's dataclass declares, as a header writes them (``name...`` for a tail)."""
    out: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
    for f in fields(call):
        out["KEYS" if f.metadata.get("keys") else "ARGV"].append(f.name + ("..." if f.metadata.get("many") else ""))
        if f.metadata.get("each"):
            out["ARGV per job"] = list(f.metadata["each"]._fields)
    return out


def binding(text: str, table: str, first: str) -> tuple[list[str], int] | None:
    """``local a, b = unpack(TABLE, first, last)``: the names bound and how many values are unpacked."""
    pattern = rf"local\s+([\w\s,]+?)\s*=\s*unpack\({table}, {first}, (?:i \+ )?(\d+)\)"
    match = re.search(pattern, text)
    if match is None:
        return None
    last = int(match[2])
    return [n.strip() for n in match[1].split(",")], last + 1 if first == "i" else last


def mismatches(call: type, text: str) -> list[str]:
    """Every way the script ``text`` and its call's dataclass disagree (empty when they agree)."""
    declared, expected = header(text), shape(call)
    problems = [
        f"{label}: header {declared.get(label)} != fields {names}"
        for label, names in expected.items()
        if declared.get(label) != names
    ]
    problems += [f"{label}: header declares it, the dataclass does not" for label in set(declared) - set(expected)]
    for label, table, first in (("KEYS", "KEYS", "1"), ("ARGV", "ARGV", "1"), ("ARGV per job", "ARGV", "i")):
        fixed = [n for n in expected.get(label, []) if not n.endswith("...")]
        if fixed and binding(text, table, first) != (fixed, len(fixed)):
            problems.append(f"{label}: the script binds {binding(text, table, first)}, not {fixed}")
        tail_loop = rf"for i = {len(fixed) + 1}, #{table}"  # a tail follows the fixed values: read from there on
        if label != "ARGV per job" and len(fixed) < len(expected[label]) and not re.search(tail_loop, text):
            problems.append(f"{label}: no loop over the tail from {len(fixed) + 1}")
    if "ARGV per job" in expected:
        start, step = len(expected["ARGV"]), len(expected["ARGV per job"])
        if not re.search(rf"for i = {start}, #ARGV, {step} do", text):
            problems.append(f"ARGV per job: no loop from {start} in steps of {step}")
    return problems


@pytest.mark.parametrize("call", CALLS, ids=lambda c: c.script)
def test_each_scripts_header_and_bindings_match_its_calls_dataclass(call):
    assert mismatches(call, lua(call.script)) == []


def test_every_script_file_has_a_call_and_every_call_a_script():
    shipped = {p.name[:-4] for p in files("worker.store").joinpath("lua").iterdir() if p.name.endswith(".lua")}
    assert shipped == {c.script for c in CALLS} | {"prelude"}


PRODUCER_CALLS = {"cancel": CancelCall, "requeue": RequeueCall}


@pytest.mark.parametrize("name", sorted(PRODUCER_CALLS))
def test_the_producers_scripts_match_their_calls_dataclasses_too(name):
    assert mismatches(PRODUCER_CALLS[name], producer_script(name)[0]) == []


def test_every_producer_script_file_has_a_call():
    shipped = {p.name[:-4] for p in files("producer").joinpath("lua").iterdir() if p.name.endswith(".lua")}
    assert shipped == set(PRODUCER_CALLS)


def test_the_check_catches_a_producer_call_out_of_order_with_its_script():
    text = producer_script("cancel")[0].replace("local job_id, queue_name", "local queue_name, job_id")
    assert mismatches(CancelCall, text)


def test_the_check_catches_a_dataclass_out_of_order_with_its_script():
    @dataclass(frozen=True)
    class Swapped:  # GIVE_BACK's fields with two ARGV fields swapped
        script = "give_back"
        wip: str = key()
        worker_executions: str = key()
        queue: str = key()
        job_prefix: str
        execution_prefix: str
        min_age_s: float
        held: tuple[str, ...] = tail()

    assert mismatches(Swapped, lua("give_back"))
    text = lua("give_back").replace("local execution_prefix, job_prefix,", "local job_prefix, execution_prefix,")
    assert mismatches(GiveBack, text)  # a script that binds them in another order than it declares


def test_a_call_flattens_to_keys_then_argv_in_field_order_with_each_job_in_turn():
    calls = QueueCalls.build(Setting("classify", "w1", 20, 3, 5.0, 100, 0))
    jobs = tuple(FinishJob(kind="ok", job_id=f"j{n}", execution_id=f"e{n}", ttl_s=n, started_at=1.5) for n in (1, 2))
    keys_out, argv = wire(replace(calls.finish, jobs=jobs))
    assert keys_out == [getattr(calls.finish, name) for name in shape(Finish)["KEYS"]]
    fixed = len(shape(Finish)["ARGV"]) - 1
    assert argv[fixed : fixed + 4] == ["ok", "j1", "e1", 1] and argv[fixed + 13 : fixed + 17] == ["ok", "j2", "e2", 2]
    assert len(argv) == fixed + 26


@pytest.fixture
def scripts(conn) -> Scripts:
    return Scripts(conn)


@pytest.fixture
def calls() -> QueueCalls:
    return QueueCalls.build(Setting("classify", "w1", 20, 3, 5.0, 100, 0))


def register(scripts: Scripts) -> None:
    call = Register(
        worker_key=keys.worker("w1"),
        sets=(keys.WORKERS, keys.queue_workers("classify")),
        ttl_s=80,
        fields=("name", "w1", "state", "idle"),
    )
    assert scripts.call(call) == 1


def test_register_and_heartbeat_run_through_their_calls(conn, scripts, calls):
    register(scripts)
    assert conn.hgetall(keys.worker("w1")) == {b"name": b"w1", b"state": b"idle"} and conn.ttl(keys.worker("w1")) > 60
    assert conn.smembers(keys.queue_workers("classify")) == {keys.worker("w1").encode()}
    conn.rpush(keys.queue("classify"), "a", "b")
    assert scripts.call(replace(calls.heartbeat, fields=("batches", 7))) == [2, 1, []]
    assert conn.hget(keys.worker("w1"), "batches") == b"7" and conn.ttl(keys.worker("w1")) <= 20
    conn.delete(keys.worker("w1"))
    assert scripts.call(calls.heartbeat) == [2, 0, []]  # gone: the caller registers again


def test_take_and_finish_run_through_their_calls(redis_url, conn, scripts, calls):
    register(scripts)
    (job_id,) = Producer(redis_url).enqueue_many([b"img"])
    _, misfits, taken, state, eid = scripts.call(replace(calls.take, max_jobs=4, execution_base="b"))
    assert (misfits, taken.decode(), state, eid) == ([], job_id, 1, b"b0001")
    assert conn.zrange(keys.started("classify"), 0, -1) == [f"{job_id}:b0001".encode()]
    job = FinishJob(
        kind="fail", job_id=job_id, execution_id="b0001", ttl_s=60, message=b"m", payload=b"x", started_at=1.0
    )
    assert scripts.call(replace(calls.finish, first_start=1.0, jobs=(job,))) == [[], [], [], []]
    assert conn.hget(keys.job(job_id), "status") == b"failed" and conn.zcard(keys.failed("classify")) == 1


def test_reap_and_give_back_run_through_their_calls(redis_url, conn, scripts, calls):
    register(scripts)
    first, second = Producer(redis_url).enqueue_many([b"a", b"b"])
    scripts.call(replace(calls.take, max_jobs=2, execution_base="b"))
    held = f"{first}:b0001"
    assert scripts.call(replace(calls.give_back, min_age_s=0.0, held=(held,))) == [[second.encode()], []]
    conn.delete(keys.worker("w1"))  # this worker died with the first job
    assert scripts.call(calls.reap) == [[first.encode()], [], []]
    assert conn.lrange(keys.queue("classify"), 0, -1) == [first.encode(), second.encode()]
    assert conn.hget(keys.job(first), "lost_deliveries") == b"1"


def test_a_script_flushed_from_redis_is_loaded_again(conn, scripts, calls):
    scripts.load()
    conn.script_flush()
    assert scripts.call(calls.heartbeat) == [0, 0, []]


def test_scripts_run_on_a_full_redis(conn, scripts, calls):
    register(scripts)
    scripts.load()
    conn.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.OutOfMemoryError):
            conn.set("more", "x")
        assert scripts.call(calls.heartbeat)[1] == 1  # allow-oom on 7; writes after a first allowed write on 6.2
    finally:
        conn.config_set("maxmemory", 0)
