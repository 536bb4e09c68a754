"""The launcher's one metrics page: every child's series, labelled by process, one HELP/TYPE per family."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.devserver import free_port
from worker.health import Health, ProbeServer
from worker.metrics import Metrics
from worker.scrape import ChildrenPage


def child(jobs: int, tag: str, ready: bool) -> tuple[ProbeServer, Metrics]:
    metrics, health = Metrics("cpu"), Health(redis_ttl_s=60)
    health.registry, health.warmed = metrics.registry, ready
    health.redis_answered()
    metrics.serving(tag)
    result = {"ok": True, "timings_ms": {"queue": 1.0, "decode": 2.0, "infer": 3.0, "total": 6.0}}
    metrics.observe_batch([result] * jobs, publish_s=0.001)
    return ProbeServer(0, health), metrics


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_the_launchers_page_holds_every_childs_series_labelled_by_process():
    (first, _), (second, _) = child(3, "tiny@7", ready=False), child(5, "tiny@8", ready=True)
    gone = free_port()  # a child restarting: nothing listens
    page = ChildrenPage([first.port, second.port, gone], timeout_s=2, restarts=lambda: [0, 0, 4])
    server = ProbeServer(0, page)
    try:
        status, text = get(server.port, "/metrics")
        assert status == 200
        assert text.count("# TYPE adclassify_jobs_total counter") == 1  # families merged, not repeated
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("adclassify_jobs_total", (("outcome", "ok"), ("process", "0")))] == 3
        assert samples[("adclassify_jobs_total", (("outcome", "ok"), ("process", "1")))] == 5
        assert samples[("adclassify_model_info", (("process", "0"), ("tag", "tiny@7")))] == 1
        assert samples[("adclassify_model_info", (("process", "1"), ("tag", "tiny@8")))] == 1
        assert samples[("adclassify_batch_size_count", (("process", "1"),))] == 1
        assert samples[("adclassify_worker_processes", (("state", "scraped"),))] == 2
        assert samples[("adclassify_worker_processes", (("state", "missing"),))] == 1
        assert samples[("adclassify_worker_restarts_total", (("process", "2"),))] == 4  # a crash loop, visible
        assert get(server.port, "/readyz") == (200, "1 of 3 worker processes ready\n")  # any child ready
        assert get(server.port, "/healthz")[0] == 200
    finally:
        for s in (server, first, second):
            s.close()
        page.close()


def test_no_child_ready_is_not_ready():
    (only, _) = child(0, "tiny@7", ready=False)
    page = ChildrenPage([only.port])
    try:
        assert page.ready() == (False, "0 of 1 worker processes ready")
    finally:
        only.close()
        page.close()


def test_a_child_cut_off_mid_answer_is_missing_not_the_whole_page():
    """A child killed while it answers (out of memory, its watchdog): the others' series still come."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def half_answers() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n# HELP adclassify_jobs_total")

    threading.Thread(target=half_answers, daemon=True).start()
    (alive, _) = child(2, "tiny@7", ready=True)
    page = ChildrenPage([alive.port, listener.getsockname()[1]], timeout_s=2)
    try:
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(page.registry).decode())}
        assert [s.labels["process"] for s in families["adclassify_model_info"].samples] == ["0"]
        assert {s.labels["state"]: s.value for s in families["adclassify_worker_processes"].samples} == {
            "scraped": 1,
            "missing": 1,
        }
        assert page.ready() == (True, "1 of 2 worker processes ready")
    finally:
        stop.set()
        listener.close()
        alive.close()
        page.close()
