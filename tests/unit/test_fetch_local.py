"""The fetcher against what is on this machine: socket pairs (the total deadline's watchdog), a loopback socket
(the check of the connected address) and files under the fetch root. No HTTP server, no Redis: milliseconds."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from worker.decode.fetch import Fetcher, FetchLimits, read_file
from worker.decode.transport import Deadlines
from worker.decode.urls import FetchPolicy, Target
from worker.errors import JobError

LIMITS = FetchLimits(max_bytes=1000, connect_timeout_s=1.0, read_timeout_s=0.2, total_timeout_s=1.0)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1 that never answers: the kernel completes each connection, the test
    accepts it afterwards to see what, if anything, the fetcher sent."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=8)
    sock.settimeout(2.0)
    yield sock
    sock.close()


def refused(fetcher: Fetcher, url: str) -> JobError:
    with pytest.raises(JobError) as err:
        fetcher.fetch(url)
    return err.value


def received(listener: socket.socket) -> bytes:
    """What the one connection the fetcher made sent before it was closed (or the read timeout ended it)."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(2.0)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
            if b"\r\n\r\n" in data:
                return data
        return data


# -- the total deadline ----------------------------------------------------------------------------
def test_the_watchdog_wakes_a_blocked_read_at_the_deadline_and_leaves_the_socket_open():
    deadlines = Deadlines()
    (ours, theirs), (late, late_peer) = socket.socketpair(), socket.socketpair()
    ours.settimeout(5.0)
    late.settimeout(5.0)
    start = time.monotonic()
    with deadlines.watch(start + 0.2) as watch:
        watch.attach(ours)
        assert ours.recv(1) == b""  # woken as if the peer had hung up, long before the 5 s read timeout
        assert 0.15 < time.monotonic() - start < 1.0 and watch.expired
        watch.attach(late)  # a socket attached after the deadline is shut down at once
        assert late.recv(1) == b""
    assert ours.fileno() >= 0  # only the watchdog's own descriptor is closed: the socket is still the pool's
    deadlines.close()
    for sock in (ours, theirs, late, late_peer):
        sock.close()


def test_a_fetch_that_ends_in_time_is_never_touched():
    deadlines = Deadlines()
    ours, theirs = socket.socketpair()
    with deadlines.watch(time.monotonic() + 0.05) as watch:
        watch.attach(ours)
    time.sleep(0.1)  # past the deadline the watch had: it is gone, nothing fires
    theirs.sendall(b"x")
    assert ours.recv(1) == b"x" and not watch.expired
    deadlines.close()
    ours.close()
    theirs.close()


# -- the connected address -------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("prefix", ["{scheme}://localhost:{port}/", "{scheme}://"], ids=["by-name", "any-host"])
def test_a_host_name_allowed_by_the_list_is_refused_before_connecting_to_loopback(listener, scheme, prefix):
    port = listener.getsockname()[1]
    fetcher = Fetcher(FetchPolicy.parse(prefix.format(scheme=scheme, port=port)), LIMITS)
    url = f"{scheme}://localhost:{port}/a.jpg"
    assert not fetcher.policy.check(url).named  # the policy lets the name pass: only the connected address says no
    error = refused(fetcher, url)
    assert (error.kind, error.retryable) == ("forbidden_url", False)
    assert "is at 127.0.0.1, not a public address" in error.message
    # DNS answered loopback: refused before any connection, so nothing tells whether the port is open
    listener.settimeout(0.05)
    with pytest.raises(TimeoutError):
        listener.accept()
    fetcher.close()


def test_the_same_loopback_socket_is_reached_when_a_prefix_names_its_address(listener):
    port = listener.getsockname()[1]
    fetcher = Fetcher(FetchPolicy.parse(f"http://127.0.0.1:{port}/"), LIMITS)
    error = refused(fetcher, f"http://127.0.0.1:{port}/a.jpg")  # the listener never answers
    assert (error.kind, error.retryable) == ("fetch_error", True)
    assert received(listener).startswith(b"GET /a.jpg HTTP/1.1\r\n")
    fetcher.close()


def test_a_name_prefix_does_not_allow_the_address_it_resolves_to_nor_the_reverse(listener):
    port = listener.getsockname()[1]
    by_name = Fetcher(FetchPolicy.parse(f"http://localhost:{port}/"), LIMITS)
    assert refused(by_name, f"http://127.0.0.1:{port}/a.jpg").kind == "forbidden_url"
    by_address = Fetcher(FetchPolicy.parse(f"http://127.0.0.1:{port}/"), LIMITS)
    assert refused(by_address, f"http://localhost:{port}/a.jpg").kind == "forbidden_url"
    anywhere = Fetcher(FetchPolicy.parse("http://"), LIMITS)
    assert refused(anywhere, f"http://127.0.0.1:{port}/a.jpg").kind == "forbidden_url"
    listener.settimeout(0.05)
    with pytest.raises(TimeoutError):  # refused by the policy: not even a connection
        listener.accept()


@pytest.mark.parametrize("host", ["exa mple.com", "a..b", "x" * 64 + ".example.com"])
def test_a_host_no_resolver_can_be_asked_about_is_forbidden_not_retried(host):
    error = refused(Fetcher(FetchPolicy.parse("http://"), LIMITS), f"http://{host}/a.jpg")
    assert (error.kind, error.retryable) == ("forbidden_url", False)


# -- files -----------------------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    return root


@pytest.mark.parametrize(
    "tail",
    [
        "a%00.jpg",  # a NUL byte: no path can hold one
        "a.jpg%00/../a.jpg",
        "%ff.jpg",  # not UTF-8
        "%2e%2e/secret.jpg",  # encoded traversal
        "..%2fsecret.jpg",  # an encoded slash
        "a.jpg/%2e%2e/%2e%2e/secret.jpg",
        "./../secret.jpg",
    ],
)
def test_hostile_file_urls_are_forbidden_cleanly(root, tail):
    fetcher = Fetcher(FetchPolicy.parse("", str(root)), LIMITS)
    error = refused(fetcher, f"file://{root}/{tail}")
    assert (error.kind, error.retryable) == ("forbidden_url", False)


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        ("b" * 300 + ".jpg", "File name too long"),  # one name over NAME_MAX
        ("a/" * 3000 + "a.jpg", "File name too long"),  # a path over PATH_MAX
        ("", "not a regular file"),  # the root itself: a directory
        ("gone.jpg", "No such file"),
    ],
    ids=["long-name", "long-path", "directory", "missing"],
)
def test_file_urls_that_can_never_be_read_fail_without_a_retry(root, tail, why):
    fetcher = Fetcher(FetchPolicy.parse("", str(root)), LIMITS)
    error = refused(fetcher, f"file://{root}/{tail}")
    assert (error.kind, error.retryable) == ("fetch_failed", False) and why in error.message


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux's /proc/self/mem")
def test_a_file_read_error_that_may_pass_is_retryable(tmp_path):
    error_target = Target(f"file://{tmp_path}/x", "file", path="/proc/self/mem")  # EIO: reading address 0
    with pytest.raises(JobError) as err:
        read_file(error_target, 10)
    assert (err.value.kind, err.value.retryable) == ("fetch_error", True)
