"""The producer CLI against a real worker: push --wait prints top-3 per image; listen prints results."""

from __future__ import annotations

import json
import subprocess
import sys

from ..conftest import IMAGES, ROOT, wait_for_workers


def test_push_wait_prints_top3_for_each_image_and_listen_sees_them(redis_url, conn, start_worker):
    start_worker("--batch-size", "8")
    wait_for_workers(conn)
    listener = subprocess.Popen(
        [sys.executable, "-m", "producer", "--redis-url", redis_url, "listen", "--count", "3", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert "listening on classify:results" in listener.stderr.readline()
    pushed = subprocess.run(
        [
            sys.executable,
            "-m",
            "producer",
            "--redis-url",
            redis_url,
            "push",
            "--wait",
            str(IMAGES / "coffee.jpg"),
            str(IMAGES / "cat.jpg"),
            str(IMAGES / "odd*.webp"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pushed.returncode == 0, pushed.stderr
    lines = pushed.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["coffee.jpg", "cat.jpg", "odd.webp"]
    assert all(line.count("class") == 3 for line in lines[:3])
    assert "3 sent, 3 ok, 0 failed" in lines[-1]
    out, _ = listener.communicate(timeout=30)
    assert listener.returncode == 0 and len(out.strip().splitlines()) == 3


def test_status_shows_queue_failures_and_live_workers(redis_url, conn, start_worker):
    import json
    import subprocess
    import sys

    from producer import Producer

    from ..conftest import ROOT, image_bytes, wait_for, wait_for_workers

    start_worker("--name", "gpu-host:cpu:4242", "--worker-ttl-s", "3")
    wait_for_workers(conn)
    producer = Producer(redis_url)
    ids = producer.enqueue_many([image_bytes("cat.jpg")] * 5 + [b"junk"])
    for job_id in ids[:5]:
        producer.result(job_id, timeout=60)
    wait_for(lambda: int(conn.hget("rq:worker:gpu-host:cpu:4242", "batches") or 0) > 0, 30)

    def status(*extra: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "producer", "--redis-url", redis_url, "status", *extra]
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)

    data = json.loads(status("--json").stdout)
    assert data["queued"] == 0 and data["failed"] == 1 and data["finished"] == 5
    (worker,) = data["workers"]
    assert worker["name"] == "gpu-host:cpu:4242" and worker["device"] == "cpu"
    assert worker["batches"] >= 1 and worker["jobs_ok"] == 5 and worker["last_heartbeat_s_ago"] < 10
    text = status().stdout
    assert "gpu-host:cpu:4242" in text and "1 failed" in text and "1 worker(s) alive" in text


def test_worker_logs_json_lines_with_its_configuration_and_no_secret(conn, redis_url, tiny_model_path):
    import json
    import subprocess
    import sys

    from ..conftest import ROOT

    conn.execute_command("ACL", "SETUSER", "logtest", "on", ">s3cret-pass", "~*", "&*", "+@all")
    url = redis_url.replace("redis://", "redis://logtest:s3cret-pass@")
    env = {"WORKER_LOG_JSON": "1", "WORKER_BURST": "1", "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-m", "worker", "--model", str(tiny_model_path), "--redis-url", url]
    args += ["--idle-wait-ms", "100"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "pid", "msg"} <= set(entry) for entry in lines)
    (config,) = [e for e in lines if e["msg"].startswith("effective configuration")]
    settings = json.loads(config["msg"].removeprefix("effective configuration "))
    assert settings["log_json"] is True and settings["burst"] is True and "logtest:***@" in settings["redis_url"]
    assert "s3cret-pass" not in proc.stderr
    conn.acl_deluser("logtest")


def test_push_shows_a_progress_bar_on_a_terminal_and_plain_lines_otherwise(redis_url, conn, start_worker):
    import os
    import pty
    import subprocess
    import sys

    from ..conftest import IMAGES, ROOT

    start_worker("--batch-size", "8")
    args = [sys.executable, "-m", "producer", "--redis-url", redis_url, "push", str(IMAGES), "--wait"]
    plain = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "sent," in plain.stdout and "images/s" in plain.stdout and "[#" not in plain.stderr
    assert sum(1 for line in plain.stdout.splitlines() if "FAILED" in line or " ms)" in line) == 20
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    out, _ = proc.communicate(timeout=120)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert b"[" + b"#" * 30 + b"] 20/20" in seen and b"images/s" in seen
    # on a terminal too, each image's line (its top-3 labels) above the bar, as README and --help promise
    assert "sent," in out and sum(1 for line in out.splitlines() if "FAILED" in line or " ms)" in line) == 20


def producer_cli(redis_url: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "producer", "--redis-url", redis_url, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def test_push_refuses_an_image_over_the_size_limit_at_enqueue_and_sends_the_rest(redis_url, conn, tmp_path):
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(27 * 1024 * 1024))  # 27 MB: over 20 MiB
    (tmp_path / "cat.jpg").write_bytes((IMAGES / "cat.jpg").read_bytes())
    pushed = producer_cli(redis_url, "push", str(tmp_path))
    assert pushed.returncode == 1, pushed.stderr
    (refused,) = [line for line in pushed.stdout.splitlines() if "huge.png" in line]
    assert "NOT ENQUEUED image_too_large" in refused
    assert conn.llen("rq:queue:classify") == 1  # cat.jpg only: nothing of the 27 MB went to Redis
    assert conn.info("memory")["used_memory"] < 20 * 1024 * 1024


def test_status_with_a_shard_down_shows_the_others_and_marks_it(redis_url, conn):
    from bench.devserver import free_port
    from producer.shards import shard_name

    dead = f"redis://127.0.0.1:{free_port()}/0"
    text = producer_cli(f"{redis_url},{dead}", "status", timeout_s=60)
    assert text.returncode == 1, text.stderr
    assert f"shard {shard_name(redis_url)}\nqueue classify: 0 queued" in text.stdout
    assert f"shard {shard_name(dead)}\nDOWN: cannot reach Redis" in text.stdout
    listed = producer_cli(f"{redis_url},{dead}", "status", "--json", timeout_s=60)
    up, down = json.loads(listed.stdout)
    assert up["shard"] == shard_name(redis_url) and up["queued"] == 0 and "down" not in up
    assert down["shard"] == shard_name(dead) and down["down"] is True and "cannot reach Redis" in down["error"]


def test_push_wait_with_a_shard_down_waits_for_the_jobs_it_did_enqueue_and_names_the_rest(
    redis_url, conn, start_worker
):
    from bench.devserver import free_port

    start_worker("--batch-size", "8")
    wait_for_workers(conn)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    pushed = producer_cli(f"{redis_url},{dead}", "push", "--wait", str(IMAGES))
    assert pushed.returncode == 1, pushed.stderr
    lines = pushed.stdout.strip().splitlines()
    done = [line for line in lines[:-1] if " ms)" in line or "FAILED" in line]
    unsent = [line for line in lines[:-1] if "NOT ENQUEUED" in line and "is unavailable" in line]
    assert done and unsent and len(done) + len(unsent) == 20  # every image accounted for, in one line each
    assert conn.llen("rq:queue:classify") == 0 and len(conn.keys("rq:job:*")) == len(done)  # all answered
    assert f"{len(done)} sent" in lines[-1] and f"{len(unsent)} not enqueued" in lines[-1]
    assert "push the images marked NOT ENQUEUED again" in pushed.stderr
    assert "no live worker" not in pushed.stderr  # the worker serving the live shard is seen


def test_push_wait_with_no_live_worker_says_so_at_once_and_waits_once_for_all(redis_url, conn):
    import time

    command = [sys.executable, "-m", "producer", "--redis-url", redis_url, "push", "--wait", "--timeout", "6"]
    command += [str(IMAGES / "cat.jpg")] * 6
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "no live worker serves queue classify" in line:
            said_after_s = time.monotonic() - started
            break
    else:
        raise AssertionError("push never said that no worker is alive")
    out, _ = proc.communicate(timeout=60)
    elapsed = time.monotonic() - started
    # before the wait, not after it: the whole 6 s wait came after the line (whatever the interpreter's start-up took)
    assert elapsed - said_after_s > 5
    assert proc.returncode == 1 and sum("TIMEOUT" in line for line in out.splitlines()) == 6
    assert elapsed < 20  # one wait of 6 s for all six, not 6 s for each (36 s)


def test_metrics_without_prometheus_client_is_refused_in_one_line_before_the_model_loads(tiny_model_path):
    """Without the ``metrics`` extra a worker (or a launcher, whose merged page needs it) crashed with a traceback
    after loading its model, and was restarted to crash again."""
    hide = "import sys; sys.modules['prometheus_client'] = None; from worker.__main__ import main; sys.exit(main())"
    args = ["--model", str(tiny_model_path), "--metrics-port", "9100", "--workers-per-device", "2"]
    done = subprocess.run([sys.executable, "-c", hide, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "worker: --metrics-port needs prometheus-client: pip install 'adclassify[metrics]'"
