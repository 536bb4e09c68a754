"""``python -m producer backfill`` against real workers fetching by reference (file:// under a fetch root, http from a
local server): every line answered once, failures listed to run again, bounded, resumable after a SIGKILL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..acls import drop_users, set_users
from ..conftest import IMAGES, ROOT, wait_for, wait_for_workers
from ..imageserver import ImageServer

FEED = "classify:results:stream"


@pytest.fixture
def server() -> Iterator[ImageServer]:
    server = ImageServer(IMAGES).start()
    yield server
    server.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The workers' --fetch-root: a few photos under ads/, and a file that is no image."""
    (tmp_path / "root" / "ads").mkdir(parents=True)
    for name in ("cat.jpg", "coffee.jpg", "flower.jpg"):
        shutil.copy(IMAGES / name, tmp_path / "root" / "ads" / name)
    (tmp_path / "root" / "ads" / "junk.jpg").write_bytes(b"not an image")
    return tmp_path / "root"


def command(redis_url: str, manifest: Path, out: Path, *extra: str) -> list[str]:
    head = [sys.executable, "-m", "producer", "--redis-url", redis_url, "backfill", str(manifest), "--out", str(out)]
    return [*head, *extra]


def backfill(
    redis_url: str, manifest: Path, out: Path, *extra: str, timeout_s: float = 120
) -> subprocess.CompletedProcess:
    args = command(redis_url, manifest, out, *extra)
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def backfill_jobs(conn) -> int:
    """How many backfill jobs were ever created (their hashes outlive their results)."""
    return len(conn.keys("rq:job:backfill-*"))


def test_a_backfill_answers_every_line_once_and_lists_the_failed_lines_to_run_again(
    redis_url, conn, start_worker, tmp_path, root, server
):
    lines = [
        "ads/cat.jpg",
        "# photos of the spring catalog",
        f"file://{root}/ads/coffee.jpg",
        server.url("/img/flower.jpg"),
        "ads/junk.jpg",
        server.url("/missing.jpg"),
        "ftp://example.com/x.jpg",
        "ads/cat.jpg",
    ]
    manifest, out = tmp_path / "catalog.txt", tmp_path / "out.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    start_worker("--fetch-root", str(root), "--fetch-allow", server.url("/"), "--batch-size", "8")
    done = backfill(redis_url, manifest, out, "--fetch-root", str(root))
    assert done.returncode == 1, done.stderr
    found = {r["line"]: r for r in records(out)}
    assert sorted(found) == [1, 3, 4, 5, 6, 7, 8] and len(records(out)) == 7  # each line once, comments skipped
    assert [n for n, r in sorted(found.items()) if r["ok"]] == [1, 3, 4, 8]
    assert {n: found[n]["error"]["type"] for n in (5, 6, 7)} == {
        5: "unsupported_image",
        6: "fetch_failed",
        7: "bad_request",
    }
    assert found[1]["url"] == (root / "ads" / "cat.jpg").as_uri() and found[1]["model"] == "tiny@7"
    assert found[1]["topk"] == found[8]["topk"] and found[1]["job_id"] != found[8]["job_id"]  # two lines, two jobs
    assert found[7]["job_id"] is None and backfill_jobs(conn) == 6  # the ftp:// line was never enqueued
    failed = tmp_path / "out.jsonl.failed.txt"
    assert failed.read_text() == f"ads/junk.jpg\n{server.url('/missing.jpg')}\nftp://example.com/x.jpg\n"
    assert "7 lines: 4 ok, 3 failed (bad_request 1, fetch_failed 1, unsupported_image 1)" in done.stdout
    assert server.hits["/img/flower.jpg"] == 1
    again = backfill(redis_url, manifest, out, "--fetch-root", str(root))  # everything is answered already
    assert again.returncode == 1 and "this run" not in again.stdout and "4 ok, 3 failed" in again.stdout
    assert len(records(out)) == 7 and backfill_jobs(conn) == 6 and conn.xlen(FEED) == 6


def enqueued(conn) -> int:
    """Jobs pushed on a queue since the stats were reset (one RPUSH per job created; no job here is retried)."""
    return int(conn.info("commandstats").get("cmdstat_rpush", {}).get("calls", 0))


def test_a_backfill_killed_mid_run_resumes_without_enqueuing_anything_twice(
    redis_url, conn, start_worker, tmp_path, root
):
    total = 400
    manifest, out = tmp_path / "catalog.txt", tmp_path / "out.jsonl"
    manifest.write_text("".join(f"ads/{('cat', 'coffee', 'flower')[n % 3]}.jpg\n" for n in range(total)))
    start_worker("--fetch-root", str(root), "--batch-size", "4")
    wait_for_workers(conn)
    conn.config_resetstat()
    # finished jobs expire after 1 s: what the killed run left in flight is then held by the feed alone
    args = command(redis_url, manifest, out, "--fetch-root", str(root), "--max-in-flight", "8", "--result-ttl-s", "1")
    killed = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: out.exists() and out.read_text().count("\n") >= 30, timeout_s=60, interval_s=0.01)
    killed.kill()
    killed.wait(timeout=10)
    written = len(records(out))
    wait_for(lambda: conn.llen("rq:queue:classify") == 0 and conn.zcard("rq:wip:classify") == 0)
    wait_for(lambda: backfill_jobs(conn) == 0, timeout_s=30)  # their 1 s result TTL passed: the jobs expired
    ran = conn.xlen(FEED)
    assert written < total and ran > written  # results unread, their jobs expired
    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    lines = [r["line"] for r in records(out)]
    assert sorted(lines) == list(range(1, total + 1))  # every line answered, once
    assert all(r["ok"] for r in records(out))
    assert enqueued(conn) == total and conn.xlen(FEED) == total  # no job created, or run, twice
    assert f"this run: {total - written} answered" in resumed.stdout


def test_jobs_in_flight_are_bounded_and_results_the_feed_lacks_are_found_in_rqs_records(
    redis_url, conn, start_worker, tmp_path, root
):
    manifest, out = tmp_path / "catalog.txt", tmp_path / "out.jsonl"
    manifest.write_text("ads/cat.jpg\n" * 30)
    args = command(redis_url, manifest, out, "--fetch-root", str(root), "--max-in-flight", "5")
    args += ["--model-tag", "tiny@7", "--check-every-s", "0.5"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: conn.llen("rq:queue:classify") == 5)
        time.sleep(1.0)  # no worker yet: nothing more may be enqueued
        assert conn.llen("rq:queue:classify") == 5 and backfill_jobs(conn) == 5
        start_worker("--fetch-root", str(root), "--results-maxlen", "0")  # no feed: only RQ's records tell
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "no live worker serves queue classify" in stderr
    assert len(records(out)) == 30 and all(r["ok"] for r in records(out)) and conn.xlen(FEED) == 0
    assert "30 lines: 30 ok, 0 failed" in stdout


def test_without_an_announced_model_it_says_so_and_waits_for_a_worker(redis_url, conn, start_worker, tmp_path, root):
    manifest, out = tmp_path / "catalog.txt", tmp_path / "out.jsonl"
    manifest.write_text("ads/cat.jpg\n")
    gave_up = backfill(redis_url, manifest, out, "--fetch-root", str(root), "--timeout", "1")
    assert gave_up.returncode == 2 and "no worker has announced a model for queue classify yet" in gave_up.stderr
    assert "no worker announced a model within 1 s" in gave_up.stderr and backfill_jobs(conn) == 0
    args = command(redis_url, manifest, out, "--fetch-root", str(root))
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "no worker has announced a model" in proc.stderr.readline()
        start_worker("--fetch-root", str(root))
        stdout, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and records(out)[0]["model"] == "tiny@7" and "1 lines: 1 ok" in stdout


@pytest.mark.both_redis
def test_the_producer_users_acl_is_all_a_backfill_needs(redis_url, conn, start_worker, tmp_path, root):
    producer_url, worker_url = set_users(conn, redis_url)
    try:
        start_worker("--redis-url", worker_url, "--fetch-root", str(root))
        manifest, out = tmp_path / "catalog.txt", tmp_path / "out.jsonl"
        manifest.write_text("ads/cat.jpg\nads/coffee.jpg\nads/junk.jpg\n")
        done = backfill(producer_url, manifest, out, "--fetch-root", str(root), "--check-every-s", "0.5")
        assert done.returncode == 1, done.stderr
        assert [r["ok"] for r in sorted(records(out), key=lambda r: r["line"])] == [True, True, False]
        assert "3 lines: 2 ok, 1 failed (unsupported_image 1)" in done.stdout
    finally:
        drop_users(conn)


def test_a_queue_limit_below_the_send_size_still_lets_every_line_through(redis_url, conn, start_worker, tmp_path, root):
    # in-flight window 200 and sends of up to 500, the queue capped at 20: sends never larger than the cap, and
    # a refused send goes on with the part that fits
    manifest, out = tmp_path / "catalog.txt", tmp_path / "out.jsonl"
    manifest.write_text("ads/cat.jpg\nads/coffee.jpg\n" * 50)
    start_worker("--fetch-root", str(root))
    args = ["--fetch-root", str(root), "--max-in-flight", "200", "--max-queue-length", "20", "--model-tag", "tiny@7"]
    done = backfill(redis_url, manifest, out, *args)
    assert done.returncode == 0, done.stderr
    assert len(records(out)) == 100 and all(r["ok"] for r in records(out))


def test_a_backfill_fills_the_result_cache_for_web_backends_unless_told_not_to(
    redis_url, conn, start_worker, tmp_path, root
):
    from producer import Producer

    start_worker("--fetch-root", str(root))
    manifest = tmp_path / "catalog.txt"
    manifest.write_text("ads/cat.jpg\n")
    spared = backfill(redis_url, manifest, tmp_path / "spared.jsonl", "--fetch-root", str(root), "--no-cache")
    assert spared.returncode == 0, spared.stderr
    assert not conn.keys("rq:adclassify:cache:*")  # --no-cache: nothing written
    done = backfill(redis_url, manifest, tmp_path / "out.jsonl", "--fetch-root", str(root))
    assert done.returncode == 0, done.stderr
    web = Producer(redis_url).classify((root / "ads" / "cat.jpg").read_bytes(), timeout=60, cache=True)
    assert web["cached"] is True and web["label"] == records(tmp_path / "out.jsonl")[0]["label"]


def test_a_resume_after_a_new_model_version_is_refused_unless_the_tag_is_named(redis_url, conn, tmp_path, root):
    from producer.manifest import read_manifest
    from producer.wire.cache import announcement
    from producer.wire.keys import announcement as announcement_key

    manifest, out = tmp_path / "catalog.txt", tmp_path / "out.jsonl"
    manifest.write_text("ads/cat.jpg\nads/coffee.jpg\n")
    first = next(read_manifest(manifest, root))
    done = {"line": first.number, "url": first.url, "ok": True, "label": "cat", "model": "tiny@6"}
    out.write_text(json.dumps(done) + "\n")  # a run killed half-way, when the workers served tiny@6
    conn.set(announcement_key("classify"), announcement("tiny@7", "fp32", "cpu", 5, 0))  # a rolling update since
    refused = backfill(redis_url, manifest, out, "--fetch-root", str(root), "--timeout", "5")
    assert refused.returncode == 2 and "holds answers of tiny@6 and the workers now announce tiny@7" in refused.stderr
    assert "--model-tag tiny@6" in refused.stderr and backfill_jobs(conn) == 0  # no second backfill begun


def test_a_result_the_feed_lost_is_found_in_rqs_records_while_the_feed_stays_busy(
    redis_url, conn, start_worker, tmp_path, root
):
    manifest, out = tmp_path / "catalog.txt", tmp_path / "out.jsonl"
    manifest.write_text("ads/cat.jpg\n" * 24)
    start_worker("--fetch-root", str(root))  # feeds its results: the feed never goes quiet for long
    start_worker("--fetch-root", str(root), "--results-maxlen", "0")  # feeds none: only RQ's records tell
    args = command(redis_url, manifest, out, "--fetch-root", str(root), "--max-in-flight", "4")
    # a quiet feed is checked only after 60 s: the lost results must be looked up sooner, within their TTL
    args += ["--model-tag", "tiny@7", "--check-every-s", "60", "--result-ttl-s", "6"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(records(out)) == 24 and all(r["ok"] for r in records(out))  # none written as job_gone
