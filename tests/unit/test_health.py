"""The watchdog's rule (stall = jobs in hand and no progress for the timeout) and the probe endpoints."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from worker.health import STALL_EXIT, Health, ProbeServer, Watchdog

from ..conftest import wait_for


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def watch(in_hand: int, timeout_s: float, keep_progressing: bool, run_s: float) -> tuple[list[int], list[str]]:
    health, exits, acts = Health(redis_ttl_s=10), [], []
    dog = Watchdog(
        health,
        lambda: in_hand,
        timeout_s,
        on_stall=lambda: acts.append("death registered"),
        check_s=0.05,
        exit=exits.append,
    )
    dog.start()
    end = time.monotonic() + run_s
    while time.monotonic() < end and not exits:
        if keep_progressing:
            health.progressed()
        time.sleep(0.02)
    dog.stop()
    dog.join(2)
    return exits, acts


def test_jobs_in_hand_without_progress_is_a_stall():
    exits, acts = watch(in_hand=2, timeout_s=0.3, keep_progressing=False, run_s=5)
    assert exits == [STALL_EXIT] and acts == ["death registered"]


def test_idling_or_progressing_is_not_a_stall():
    assert watch(in_hand=0, timeout_s=0.2, keep_progressing=False, run_s=0.5) == ([], [])  # 2.5 timeouts
    assert watch(in_hand=3, timeout_s=0.2, keep_progressing=True, run_s=0.5) == ([], [])


def test_probes_answer_readiness_and_liveness():
    health = Health(redis_ttl_s=0.5)
    server = ProbeServer(0, health)
    try:
        port = server.port
        assert status(port, "/healthz") == 200
        assert status(port, "/readyz") == 503  # warming up
        health.warmed = True
        assert status(port, "/readyz") == 503  # Redis has not answered yet
        health.redis_answered()
        assert status(port, "/readyz") == 200
        health.redis_ok_at -= 1.0  # Redis last answered longer ago than the TTL
        assert status(port, "/readyz") == 503
        health.stalled = True
        assert status(port, "/healthz") == 503
        assert status(port, "/metrics") == 404 and status(port, "/nope") == 404  # metrics off
    finally:
        server.close()


def test_a_worker_whose_every_take_fails_for_a_ttl_is_not_ready_though_its_heartbeat_answers():
    import threading

    from worker.pipeline import Pipeline, PipelineSettings
    from worker.store import StoreUnavailable
    from worker.store.memory import MemoryBroker, MemoryStore

    from .test_pipeline import PassThrough, Recorder

    class Refused(MemoryStore):  # an ACL that lost the take's commands: the heartbeat's still answer
        def take(self, max_jobs: int, timeout_s: float) -> list:
            raise StoreUnavailable("redis refused: NOPERM this user has no permissions to run the 'blmove' command")

    health, stop = Health(redis_ttl_s=0.3), threading.Event()
    health.warmed = True
    settings = PipelineSettings("w1", max_wait_ms=1.0, idle_wait_ms=20)
    pipeline = Pipeline(Refused(MemoryBroker(), "w1"), PassThrough(), Recorder(cap=4), settings, stop, health=health)
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()

    def not_ready() -> str | None:
        health.redis_answered()  # the heartbeat
        ok, why = health.ready()
        return None if ok else why

    try:
        assert "NOPERM" in wait_for(not_ready, timeout_s=10) and "every take failed" in not_ready()
    finally:
        stop.set()
        thread.join(10)
    health.take_answered()
    assert health.ready() == (True, "ready")
