"""The wire format and the result contract: msgpack only, pure logic."""

from __future__ import annotations

import pickle

import pytest

from producer.wire.jobs import ProtocolError, parse_job_args
from producer.wire.results import exc_string_for, make_result, parse_exc_string, validate_result
from producer.wire.serializer import MsgpackSerializer, SerializationError
from worker.errors import JobError
from worker.jobs import checked_args, job_inputs
from worker.store import JobRecord


def test_serializer_round_trips_job_data_with_bytes_and_nesting():
    data = ("worker.tasks.classify", None, (), {"image": b"\x00\xff" * 10, "meta": {"ad": 1, "tags": ["a", None]}})
    assert MsgpackSerializer.loads(MsgpackSerializer.dumps(data)) == [
        "worker.tasks.classify",
        None,
        [],
        {"image": b"\x00\xff" * 10, "meta": {"ad": 1, "tags": ["a", None]}},
    ]


@pytest.mark.parametrize("blob", [pickle.dumps(("os.system", None, ("id",), {})), b"", b"\xc1", b"{json}"])
def test_serializer_refuses_anything_that_is_not_msgpack(blob):
    with pytest.raises(SerializationError):
        MsgpackSerializer.loads(blob)


def test_serializer_refuses_objects_msgpack_cannot_describe():
    with pytest.raises(SerializationError):
        MsgpackSerializer.dumps({"x": object()})


def test_a_valid_job_passes_validation():
    job = JobRecord("j1", "e1", func_name="worker.tasks.classify", kwargs={"image": b"img", "meta": {"k": "v"}})
    assert job_inputs(job) == (b"img", {"k": "v"})


@pytest.mark.parametrize(
    ("job", "kind"),
    [
        (JobRecord("j", "e", func_name="os.system", args=["id"], kwargs={}), "forbidden_function"),
        (JobRecord("j", "e", func_name=None, read_error="job data is not valid msgpack"), "bad_job_data"),
        (JobRecord("j", "e", func_name=["worker.tasks.classify"], kwargs={"image": b"x"}), "forbidden_function"),
        (JobRecord("j", "e", func_name="worker.tasks.classify", kwargs={"image": b"x", "deadline": 1.0}), "expired"),
    ],
    ids=["other-function", "unreadable", "non-string-name", "deadline-passed"],
)
def test_jobs_that_may_not_run_are_refused_by_kind(job, kind):
    with pytest.raises(JobError) as err:
        job_inputs(job)
    assert err.value.kind == kind


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("x",), {"image": b"x"}, "keyword arguments only"),
        ((), {}, "missing job argument: image"),
        ((), {"image": "a string"}, "image must be bytes"),
        ((), {"image": b"x", "colour": 1}, "unexpected job arguments: colour"),
        ((), {"image": b"x", "meta": [1]}, "meta must be a map"),
    ],
)
def test_job_arguments_that_break_the_contract_are_named(args, kwargs, message):
    with pytest.raises(ProtocolError, match=message):
        parse_job_args(args, kwargs)


def test_oversized_meta_is_a_bad_request():
    with pytest.raises(JobError, match=r"meta is .* over the limit"):
        checked_args((), {"image": b"x", "meta": {"blob": "x" * 100_000}})


def test_results_have_every_key_and_ok_matches_error():
    good = make_result("j", model="m@1", worker="w", timings_ms={"decode": 1}, meta={}, topk=[("cat", 0.9)])
    bad = make_result("j", model="m@1", worker="w", timings_ms={}, meta={}, error={"type": "t", "message": "m"})
    assert validate_result(good)["label"] == "cat" and good["timings_ms"]["queue"] == 0.0
    assert validate_result(bad)["ok"] is False and bad["topk"] == [] and bad["label"] is None
    with pytest.raises(ProtocolError):
        validate_result({**good, "error": {"type": "x", "message": ""}})


def test_results_carry_wire_version_1_and_readers_check_it():
    result = make_result("j", model="m@1", worker="w", timings_ms={}, meta={}, topk=[("cat", 0.9)])
    assert result["v"] == 1
    assert validate_result({k: v for k, v in result.items() if k != "v"})["ok"]  # absent reads as 1
    with pytest.raises(ProtocolError, match="newer"):
        validate_result({**result, "v": 2})


def test_failure_text_round_trips_and_plain_tracebacks_are_understood():
    error = {"type": "unsupported_image", "message": "cannot identify: x: y"}
    assert parse_exc_string(exc_string_for(error)) == error
    traceback = "Traceback (most recent call last):\n  ...\nworker.errors.JobError: image_too_large: 9 bytes\n"
    assert parse_exc_string(traceback) == {"type": "image_too_large", "message": "9 bytes"}
    assert parse_exc_string("Traceback\nValueError: boom") == {"type": "ValueError", "message": "boom"}
