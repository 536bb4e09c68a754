"""The backfill's pure parts: the manifest and its identity, the output file, progress, and the check of RQ's records
on scripted replies (no server)."""

from __future__ import annotations

import io
import json
import zlib
from base64 import b64encode
from typing import Any

import pytest
from rq.job import JOB_ID_PATTERN

from producer.backfill_out import FAILED, OK, OutFile, OutputBusy, make_record, refusal, write_failed
from producer.manifest import BackfillIdentity, ManifestLine, parse_line, read_manifest
from producer.ops import Batch, Call, Done, Op, advance
from producer.progress import Progress, duration_text
from producer.settled import settled
from producer.wire.results import exc_string_for, make_result
from producer.wire.serializer import dumps


def test_a_manifest_line_is_a_url_or_a_path_under_the_fetch_root_and_comments_are_skipped(tmp_path):
    root = tmp_path / "images"
    lines = [
        "https://cdn.example.com/ads/1.jpg",
        "  ",
        "# a comment",
        "ads/2.jpg",
        f"{root}/ads/3.jpg",
        "file:///srv/x.jpg",
        "/etc/passwd",
        "ads/../../escape.jpg",
        "ftp://host/y.jpg",
    ]
    (tmp_path / "manifest.txt").write_text("\n".join(lines) + "\n")
    read = list(read_manifest(tmp_path / "manifest.txt", root))
    assert [line.number for line in read] == [1, 4, 5, 6, 7, 8, 9]  # physical line numbers, as an editor shows
    assert [line.url for line in read[:4]] == [
        "https://cdn.example.com/ads/1.jpg",
        (root / "ads/2.jpg").as_uri(),
        (root / "ads/3.jpg").as_uri(),
        "file:///srv/x.jpg",  # a file:// URL as given: the worker's --fetch-root decides
    ]
    assert [line.error["type"] for line in read[4:]] == ["forbidden_url", "forbidden_url", "bad_request"]
    assert all(line.url is None for line in read[4:])


def test_without_a_fetch_root_relative_paths_are_taken_from_the_manifests_directory(tmp_path):
    parsed = parse_line(3, "a b/ü%.jpg\n", None, tmp_path)
    assert parsed is not None and parsed.text == "a b/ü%.jpg"
    assert parsed.url == f"file://{tmp_path}/a%20b/%C3%BC%25.jpg"  # percent-encoded: the worker unquotes it


def line(number: int, url: str = "https://cdn.example.com/1.jpg") -> ManifestLine:
    return ManifestLine(number, url, url)


def test_job_ids_are_the_same_for_the_same_backfill_and_differ_for_another_model_output_or_line(tmp_path):
    one = BackfillIdentity.of(tmp_path / "m.txt", tmp_path / "out.jsonl", "tiny@7")
    again = BackfillIdentity.of(tmp_path / "." / "m.txt", tmp_path / "out.jsonl", "tiny@7")
    assert one.job_id(line(4)) == again.job_id(line(4)) and one.group == again.group
    others = [
        BackfillIdentity.of(tmp_path / "m.txt", tmp_path / "out.jsonl", "tiny@8").job_id(line(4)),
        BackfillIdentity.of(tmp_path / "m.txt", tmp_path / "other.jsonl", "tiny@7").job_id(line(4)),
        BackfillIdentity.of(tmp_path / "failed.txt", tmp_path / "out.jsonl", "tiny@7").job_id(line(4)),
        one.job_id(line(5)),
        one.job_id(line(4, "https://cdn.example.com/2.jpg")),
    ]
    assert len({one.job_id(line(4)), *others}) == 6
    assert all(JOB_ID_PATTERN.fullmatch(job_id) for job_id in others)
    assert one.group.startswith("backfill-") and one.job_id(line(4)).startswith(one.group + "-4-")


def record(number: int, ok: bool = True, url: str = "https://cdn.example.com/1.jpg") -> dict[str, Any]:
    error = None if ok else {"type": "fetch_failed", "message": "HTTP 404"}
    result = make_result(
        f"j{number}", model="tiny@7", worker="w", timings_ms={}, meta={}, topk=[("cat", 0.9)], error=error
    )
    return make_record(ManifestLine(number, url, url), f"j{number}", result)


def test_the_output_is_read_back_and_a_half_written_last_line_is_cut_off(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(record(1)) + "\n" + json.dumps(record(2, ok=False)) + '\n{"line": 3, "u')
    out = OutFile(path).open()
    try:
        assert out.answered.state(1) == OK and out.answered.state(2) == FAILED and out.answered.state(3) == 0
        assert out.answered.outcomes == {"ok": 1, "fetch_failed": 1}
        assert out.write(record(3)) and not out.write(record(1))  # a line answered already is not written twice
    finally:
        out.close()
    lines = [json.loads(raw) for raw in path.read_text().splitlines()]
    assert [r["line"] for r in lines] == [1, 2, 3] and lines[2]["label"] == "cat" and lines[2]["model"] == "tiny@7"


def test_an_answered_line_is_known_with_the_url_it_was_answered_for(tmp_path):
    out = OutFile(tmp_path / "out.jsonl").open()
    try:
        out.write(record(7, url="https://a/1.jpg"))
        assert out.answered.same_url(ManifestLine(7, "https://a/1.jpg", "https://a/1.jpg"))
        assert not out.answered.same_url(ManifestLine(7, "https://a/2.jpg", "https://a/2.jpg"))
    finally:
        out.close()


def test_one_output_is_written_by_one_backfill_at_a_time(tmp_path):
    first = OutFile(tmp_path / "out.jsonl").open()
    try:
        with pytest.raises(OutputBusy):
            OutFile(tmp_path / "out.jsonl").open()
    finally:
        first.close()
    OutFile(tmp_path / "out.jsonl").open().close()  # free again


def test_a_refused_line_is_recorded_failed_without_a_job():
    bad = ManifestLine(9, "ftp://x/y.jpg", None, {"type": "bad_request", "message": "ftp:// is not fetched"})
    assert refusal(bad) == {
        "line": 9,
        "url": "ftp://x/y.jpg",
        "job_id": None,
        "ok": False,
        "label": None,
        "score": None,
        "topk": [],
        "error": bad.error,
        "model": "",
    }


def test_the_failed_file_holds_the_lines_as_written_and_goes_when_none_failed(tmp_path):
    path = tmp_path / "out.failed.txt"
    assert write_failed(path, [ManifestLine(2, "ads/2.jpg", "file:///r/ads/2.jpg"), line(5)]) == 2
    assert path.read_text() == "ads/2.jpg\nhttps://cdn.example.com/1.jpg\n"
    assert write_failed(path, []) == 0 and not path.exists()


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_off_a_terminal_is_a_plain_line_now_and_then_with_rate_and_eta():
    now = [100.0]
    stream = Stream(tty=False)
    progress = Progress(100, start_done=20, stream=stream, every_s=5.0, clock=lambda: now[0])
    for done in range(21, 41):
        now[0] += 0.5  # 2 lines/s
        progress.update(done, done - 1, 1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # the first answer, one 5 s later, then the last state
    assert lines[-1] == "progress: 40/100 ok 39 failed 1 2.0 images/s ETA 0:30" and "\r" not in stream.getvalue()


def test_progress_on_a_terminal_is_a_bar_redrawn_in_place():
    stream = Stream(tty=True)
    progress = Progress(10, stream=stream, clock=iter([0.0, 1.0, 1.0, 1.0, 1.0]).__next__)
    progress.update(5, 5, 0)
    text = stream.getvalue()
    assert text.startswith("\r\033[K[###############...............] 5/10") and "5.0 images/s ETA 0:01" in text


def test_durations_read_as_a_clock():
    assert [duration_text(s) for s in (0, 65, 3723, float("nan"))] == ["0:00", "1:05", "1:02:03", "?"]


def run(procedure: Any, answer: Any) -> tuple[Any, list[Op]]:
    sent: list[Op] = []
    op = advance(procedure, None, None)
    while not isinstance(op, Done):
        sent.append(op)
        op = advance(procedure, answer(op), None)
    return op.value, sent


def entry(kind: bytes, field: bytes, value: bytes) -> list:
    return [[b"rq:results:x", [(b"1700000000000-0", {b"type": kind, field: value})]]]


def test_the_check_of_rqs_records_reads_statuses_and_the_results_of_jobs_that_ended():
    done = make_result("done", model="tiny@7", worker="w", timings_ms={}, meta={}, topk=[("cat", 0.9)])
    failure = exc_string_for({"type": "fetch_failed", "message": "HTTP 404"})
    results = {
        "done": entry(b"1", b"return_value", b64encode(dumps(done))),
        "bad": entry(b"2", b"exc_string", b64encode(zlib.compress(failure.encode()))),
    }
    statuses = {"done": b"finished", "bad": b"failed", "queued": b"queued", "gone": None}

    def answer(op: Op) -> Any:
        if isinstance(op, Batch) and op.commands[0].args[0] == "HGET":
            return [statuses[c.args[1].removeprefix("rq:job:")] for c in op.commands]
        if isinstance(op, Batch):  # a result read: XREAD, HGET status, HGET requeued_after
            job_id = op.commands[0].args[-2].removeprefix("rq:results:")
            return [results.get(job_id), statuses[job_id], None]  # no requeued_after
        assert isinstance(op, Call) and op.command.args[0] == "EXISTS"
        return 0

    found, _ = run(settled(lambda job_id: 0, ["done", "bad", "queued", "gone"]), answer)
    assert sorted(found.results) == ["bad", "done"] and found.missing == ["gone"]  # the queued one is left to come
    assert found.results["done"]["label"] == "cat" and found.results["bad"]["error"]["type"] == "fetch_failed"
    assert not found.results["bad"]["ok"]


def test_the_check_asks_each_shard_for_its_own_jobs():
    _, sent = run(
        settled(lambda job_id: int(job_id[-1]), ["a0", "b1", "c0"]), lambda op: [b"queued"] * len(op.commands)
    )
    assert [(op.shard, [c.args[1] for c in op.commands]) for op in sent] == [
        (0, ["rq:job:a0", "rq:job:c0"]),
        (1, ["rq:job:b1"]),
    ]


def test_a_note_on_a_terminal_goes_above_the_bar_which_is_drawn_again():
    stream = Stream(tty=True)
    progress = Progress(10, stream=stream, clock=lambda: 1.0)
    progress.update(5, 5, 0)
    progress.note("backfill: the queue is full")
    text = stream.getvalue()
    assert text.count("] 5/10") == 2 and "\r\033[Kbackfill: the queue is full\n\r\033[K[" in text
