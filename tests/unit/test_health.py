"""The watchdog's rule (stall = jobs in hand and no progress for the timeout) and the probe endpoints."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from worker.health import STALL_EXIT, Health, ProbeServer, Watchdog


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
