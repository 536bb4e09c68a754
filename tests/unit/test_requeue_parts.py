"""``requeue``'s pure parts: which failures it selects, what it reads from a failed job's records, the list of
deterministic error types held against the worker's own, and the script's call held against the Lua."""

from __future__ import annotations

import re
import zlib
from base64 import b64encode
from dataclasses import fields
from datetime import datetime, timezone

from producer.requeue import DETERMINISTIC, Failure, Selection, failure_of
from producer.requeue_call import RequeueCall, rq_time, script
from producer.wire.results import CANCELED, GONE, exc_string_for, poison_error

from ..conftest import ROOT

NOW = 1_800_000_000.0


def failure(kind: str, age_s: float | None = 600.0, status: str | None = "failed") -> Failure:
    failed_at = None if age_s is None else NOW - age_s
    return Failure("j1", 0, status, {"type": kind, "message": "..."}, failed_at)


def test_by_default_every_failure_but_the_deterministic_ones_is_selected():
    default = Selection()
    assert default.skip_reason(failure("fetch_error"), NOW) is None
    assert default.skip_reason(failure("model_error"), NOW) is None
    assert default.skip_reason(failure("JobTimeoutException"), NOW) is None  # a plain rq worker's exception
    for kind in ("poison", "unsupported_image", "forbidden_url", "expired", "bad_request"):
        assert default.skip_reason(failure(kind), NOW).startswith("deterministic")


def test_error_names_exactly_the_types_to_requeue_deterministic_ones_included():
    asked = Selection(frozenset({"poison", "fetch_error"}))
    assert asked.skip_reason(failure("poison"), NOW) is None and asked.skip_reason(failure("fetch_error"), NOW) is None
    assert asked.skip_reason(failure("model_error"), NOW) == "another type than --error names"


def test_older_than_keeps_recent_failures_and_those_of_unknown_age_where_they_are():
    aged = Selection(older_than_s=300)
    assert aged.skip_reason(failure("fetch_error", age_s=301), NOW) is None
    assert aged.skip_reason(failure("fetch_error", age_s=299), NOW) == "failed less than 300 s ago"
    assert aged.skip_reason(failure("fetch_error", age_s=None), NOW) == "failed less than 300 s ago"
    assert Selection().skip_reason(failure("fetch_error", age_s=None), NOW) is None


def test_a_failure_whose_job_expired_is_never_selected():
    assert (
        Selection(frozenset({"fetch_error"})).skip_reason(failure("fetch_error", status=None), NOW).startswith("gone")
    )


def entry(exc_string: str, ms: int = 1_700_000_000_123) -> list:
    return [(f"{ms}-0".encode(), {b"type": b"2", b"exc_string": b64encode(zlib.compress(exc_string.encode()))})]


def test_a_failures_type_and_time_come_from_its_latest_rq_result():
    ours = failure_of(0, "j1", b"failed", b"2023-11-14T22:13:20.000000Z", entry(exc_string_for(poison_error(3))))
    assert ours.error["type"] == "poison" and ours.status == "failed" and ours.failed_at == 1_700_000_000.123
    traceback = "Traceback (most recent call last):\n  ...\nrq.timeouts.JobTimeoutException: Task exceeded 300 s"
    plain = failure_of(0, "j2", b"failed", None, entry(traceback))
    assert plain.error == {"type": "JobTimeoutException", "message": "Task exceeded 300 s"}


def test_a_failure_without_a_result_is_of_unknown_type_failed_when_it_ended():
    found = failure_of(0, "j3", b"failed", b"2023-11-14T22:13:20.000000Z", [])
    assert found.error["type"] == "unknown" and found.failed_at == 1_700_000_000.0
    assert failure_of(0, "j4", None, None, []).status is None


def worker_error_kinds() -> tuple[set[str], set[str]]:
    """Every error type the worker's code raises, split into the ones it marks retryable and the rest."""
    kinds, retried = set(), set()
    for path in (ROOT / "worker").rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r'JobError\(\s*"(\w+)"((?:[^()]|\([^()]*\))*)\)', text):
            (retried if "retryable=True" in match[2] else kinds).add(match[1])
    from worker.decode.cpu import ImageError  # decode's failures carry their type as a class attribute

    kinds |= {cls.kind for cls in (ImageError, *ImageError.__subclasses__())}
    return kinds - retried, retried


def test_the_deterministic_list_holds_every_error_the_worker_does_not_retry_and_none_it_does():
    deterministic, retried = worker_error_kinds()
    assert {"fetch_error", "model_error"} <= retried and retried.isdisjoint(DETERMINISTIC)
    assert {"unsupported_image", "forbidden_url", "expired", "fetch_failed"} <= deterministic
    assert deterministic <= DETERMINISTIC
    assert {poison_error(3)["type"], GONE["type"], CANCELED["type"]} <= DETERMINISTIC  # the store's scripts'


def test_the_requeue_script_declares_and_binds_the_calls_fields_in_wire_order():
    text = script()[0]
    declared = {m[1]: [n.strip() for n in m[2].split(",")] for m in re.finditer(r"^-- (KEYS|ARGV): (.*)$", text, re.M)}
    names = {
        label: [f.name for f in fields(RequeueCall) if bool(f.metadata.get("keys")) == (label == "KEYS")]
        for label in ("KEYS", "ARGV")
    }
    assert declared == names
    for label, bound in names.items():
        assert f"local {', '.join(bound)} = unpack({label}, 1, {len(bound)})" in text


def test_the_call_names_rqs_keys_and_writes_the_time_as_rq_does():
    when = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    keys_, argv = RequeueCall.of("ad-1", "classify", when).wire()
    assert keys_ == ["rq:failed:classify", "rq:job:ad-1", "rq:results:ad-1", "rq:queue:classify", "rq:queues"]
    assert argv == ["ad-1", "classify", "2026-05-01T12:00:00.123456Z"] and rq_time(when) == argv[2]
