"""The fetcher against a real local HTTP server: good, slow, trickling, missing, endless, redirected, reset, silent."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from worker.decode import Fetched
from worker.decode.fetch import Fetcher, FetchLimits, FetchStage
from worker.decode.urls import FetchPolicy
from worker.errors import JobError
from worker.store.memory import MemoryBroker

from ..conftest import IMAGES, image_bytes, wait_for
from ..imageserver import ImageServer
from ..unit.test_pipeline import Recorder
from ..unit.test_pipeline_fetch import results, run

LIMITS = FetchLimits(max_bytes=1 << 20, connect_timeout_s=1.0, read_timeout_s=0.5, total_timeout_s=1.5)
# every single socket operation may wait longer than the whole fetch: only the total deadline can end it
TRICKLE_LIMITS = FetchLimits(max_bytes=1 << 20, connect_timeout_s=5.0, read_timeout_s=5.0, total_timeout_s=1.0)
MARGIN_S = 0.5


@pytest.fixture
def server() -> Iterator[ImageServer]:
    server = ImageServer(IMAGES).start()
    yield server
    server.stop()


@pytest.fixture
def fetcher(server: ImageServer) -> Iterator[Fetcher]:
    fetcher = Fetcher(FetchPolicy.parse(f"http://127.0.0.1:{server.port}/"), LIMITS)
    yield fetcher
    fetcher.close()


def failure(fetcher: Fetcher, url: str) -> JobError:
    with pytest.raises(JobError) as err:
        fetcher.fetch(url)
    return err.value


def test_an_image_is_fetched_whole_and_connections_are_reused(server, fetcher):
    assert fetcher.fetch(server.url("/img/cat.jpg")) == image_bytes("cat.jpg")
    assert fetcher.fetch(server.url("/img/coffee.jpg")) == image_bytes("coffee.jpg")
    pool = fetcher.named.connection_from_host("127.0.0.1", server.port, "http")
    assert pool.num_connections == 1 and pool.num_requests == 2


def test_a_server_that_answers_too_late_is_a_retryable_timeout(server, fetcher):
    start = time.monotonic()
    error = failure(fetcher, server.url("/slow.jpg"))
    assert (error.kind, error.retryable) == ("fetch_error", True) and "timed out" in error.message
    assert time.monotonic() - start < LIMITS.total_timeout_s + 1


def test_a_server_that_never_answers_is_a_retryable_timeout(server, fetcher):
    silent = Fetcher(FetchPolicy.parse(server.silent_url.rsplit("/", 1)[0] + "/"), LIMITS)
    error = failure(silent, server.silent_url)
    assert (error.kind, error.retryable) == ("fetch_error", True) and "timed out" in error.message


def bounded_failure(fetcher: Fetcher, url: str, limit_s: float) -> tuple[JobError, float]:
    """The fetch's error and how long it took; the test fails (instead of hanging) if it outlives ``limit_s``."""
    outcome: list[object] = []

    def attempt() -> None:
        start = time.monotonic()
        try:
            fetcher.fetch(url)
        except JobError as exc:
            outcome.extend((exc, time.monotonic() - start))
        else:
            outcome.extend((None, time.monotonic() - start))

    thread = threading.Thread(target=attempt, daemon=True)  # released by the server's stop() if it hangs
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"the fetch of {url} was still running after {limit_s} s"
    assert isinstance(outcome[0], JobError), f"the fetch of {url} succeeded"
    return outcome[0], outcome[1]


@pytest.mark.parametrize(
    ("path", "phase"),
    [
        ("/trickle-head.jpg", "head"),
        ("/trickle-chunked.jpg", "chunked"),
        ("/trickle.jpg", "body"),
        ("/img/cat.jpg", "tls"),
    ],
    ids=["status-line-and-headers", "chunk-size-line", "body", "tls-handshake"],
)
def test_a_server_that_trickles_in_any_phase_is_cut_off_at_the_total_deadline(server, path, phase):
    scheme = "https" if phase == "tls" else "http"
    fetcher = Fetcher(FetchPolicy.parse(f"{scheme}://127.0.0.1:{server.port}/"), TRICKLE_LIMITS)
    url = server.url(path).replace("http://", f"{scheme}://")
    try:
        error, took_s = bounded_failure(fetcher, url, TRICKLE_LIMITS.total_timeout_s + 5)
    finally:
        fetcher.close()
    assert (error.kind, error.retryable) == ("fetch_error", True) and "total deadline" in error.message
    assert TRICKLE_LIMITS.total_timeout_s - 0.05 <= took_s < TRICKLE_LIMITS.total_timeout_s + MARGIN_S
    # the fetch let go of the connection: the server's next writes find nobody reading
    wait_for(lambda: server.hung_up["tls" if phase == "tls" else path] == 1, timeout_s=5)


def test_a_trickling_answer_costs_one_deadline_and_the_connection_pool_carries_on(server, fetcher):
    error, took_s = bounded_failure(fetcher, server.url("/trickle-head.jpg"), LIMITS.total_timeout_s + 5)
    assert error.kind == "fetch_error" and took_s < LIMITS.total_timeout_s + MARGIN_S
    assert fetcher.fetch(server.url("/img/cat.jpg")) == image_bytes("cat.jpg")


def test_a_good_url_job_behind_a_trickling_one_still_runs(tmp_path):
    (tmp_path / "good").write_bytes(b"good")
    server = ImageServer(tmp_path).start()
    limits = FetchLimits(max_bytes=1 << 20, connect_timeout_s=5.0, read_timeout_s=5.0, total_timeout_s=0.5)
    stage = FetchStage(Fetcher(FetchPolicy.parse(f"http://127.0.0.1:{server.port}/"), limits), threads=1)
    broker = MemoryBroker()
    stuck = broker.enqueue({"image_url": server.url("/trickle-head.jpg")})
    good = broker.enqueue({"image_url": server.url("/img/good")})
    answered: list[int] = []
    start = time.monotonic()
    try:
        worker = threading.Thread(target=lambda: answered.append(run(broker, Recorder(cap=8), stage)), daemon=True)
        worker.start()
        worker.join(limits.total_timeout_s + 10)
        assert not worker.is_alive(), "the pipeline never drained its queue"
    finally:
        server.stop()
    assert answered == [2] and time.monotonic() - start < limits.total_timeout_s + 5
    got = results(broker)
    assert got[stuck]["error"]["type"] == "fetch_error" and broker.status(stuck) == "failed"
    assert got[good]["ok"] and got[good]["label"] == "good" and broker.status(good) == "finished"


def test_a_404_is_a_deterministic_failure_and_a_503_a_retryable_one(server, fetcher):
    missing = failure(fetcher, server.url("/missing.jpg"))
    assert (missing.kind, missing.retryable) == ("fetch_failed", False) and "HTTP 404" in missing.message
    unavailable = failure(fetcher, server.url("/unavailable.jpg"))
    assert (unavailable.kind, unavailable.retryable) == ("fetch_error", True)


def test_a_body_that_is_not_an_image_is_refused_by_its_content_type(server, fetcher):
    for path in ("/page.html", "/octet.jpg"):
        error = failure(fetcher, server.url(path))
        assert error.kind == "fetch_failed" and "is not image/*" in error.message


def test_an_endless_body_is_stopped_while_streaming(server, fetcher):
    error = failure(fetcher, server.url("/endless.jpg"))
    assert error.kind == "fetch_failed" and "while streaming" in error.message
    # the client hung up: the server's writes failed long before "endless" (socket buffers hold a few MB)
    assert server.endless_done.wait(10) and not server.release.is_set()
    assert server.endless_sent < 64 * LIMITS.max_bytes


def test_a_declared_size_over_the_limit_is_refused_before_reading(server, fetcher):
    error = failure(fetcher, server.url("/declared-big.jpg"))
    assert error.kind == "fetch_failed" and "declares" in error.message


def test_a_connection_reset_is_retryable(server, fetcher):
    error = failure(fetcher, server.url("/reset.jpg"))
    assert (error.kind, error.retryable) == ("fetch_error", True)


def test_redirects_are_followed_inside_the_allow_list_only(server, fetcher):
    inside = server.url("/redirect?to=/img/cat.jpg")
    assert fetcher.fetch(inside) == image_bytes("cat.jpg")
    outside = server.url(f"/redirect?to=http://127.0.0.2:{server.port}/img/cat.jpg")
    error = failure(fetcher, outside)
    assert (error.kind, error.retryable) == ("forbidden_url", False) and "redirects out" in error.message
    to_file = failure(fetcher, server.url("/redirect?to=file:///etc/passwd"))
    assert to_file.kind == "forbidden_url"
    loop = failure(fetcher, server.url("/loop"))
    assert loop.kind == "fetch_failed" and "more than 3 redirects" in loop.message
    assert server.hits["/loop"] == LIMITS.max_redirects + 1
    assert server.hits["/img/cat.jpg"] == 1


def test_file_urls_are_read_under_the_root_only(tmp_path, server):
    root = tmp_path / "root"
    root.mkdir()
    (root / "cat.jpg").write_bytes(image_bytes("cat.jpg"))
    (root / "big.jpg").write_bytes(b"\xff" * (LIMITS.max_bytes + 1))
    os.mkfifo(root / "pipe.jpg")
    files = Fetcher(FetchPolicy.parse("", str(root)), LIMITS)
    assert files.fetch(f"file://{root}/cat.jpg") == image_bytes("cat.jpg")
    assert failure(files, f"file://{root}/big.jpg").kind == "fetch_failed"
    assert failure(files, f"file://{root}/pipe.jpg").message.endswith("not a regular file")
    assert failure(files, f"file://{root}/gone.jpg").kind == "fetch_failed"
    assert failure(files, f"file://{IMAGES}/cat.jpg").kind == "forbidden_url"
    no_root = Fetcher(FetchPolicy.parse(f"http://127.0.0.1:{server.port}/"), LIMITS)
    assert failure(no_root, f"file://{root}/cat.jpg").kind == "forbidden_url"


def test_the_stage_fetches_in_parallel_and_answers_every_url(server, fetcher):
    stage = FetchStage(fetcher, threads=4)
    got: dict[str, Fetched] = {}
    lock = threading.Lock()

    def done(url: str) -> callable:
        def record(fetched: Fetched) -> None:
            with lock:
                got[url] = fetched

        return record

    urls = [server.url("/slow.jpg")] * 1 + [server.url(f"/img/{n}") for n in ("cat.jpg", "coffee.jpg")]
    urls += [server.url("/missing.jpg")]
    for url in urls:
        stage.submit(url, done(url))
    # the slow one holds a thread; the others are answered meanwhile
    wait_for(lambda: len(got) == 3, timeout_s=LIMITS.read_timeout_s)
    stage.close()
    assert got[server.url("/img/cat.jpg")].data == image_bytes("cat.jpg")
    assert got[server.url("/missing.jpg")].error.kind == "fetch_failed"
    assert got[server.url("/slow.jpg")].error.kind == "fetch_error"
