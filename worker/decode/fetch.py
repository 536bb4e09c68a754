"""Images by reference: fetch a job's ``image_url`` with pooled urllib3 connections, SSRF-guarded, off the loop.

``Fetcher.fetch`` checks the URL against ``worker.decode.urls.FetchPolicy``, connects (a host name's
address is checked once the socket is connected, so what DNS answered at connect time is what is
judged: no rebinding between a check and the connection), follows at most ``max_redirects``
redirects itself, re-checking every hop, and streams the body up to ``max_bytes``. Deadlines:
``connect_timeout_s`` per connection, ``read_timeout_s`` per silence while reading, and
``total_timeout_s`` for the whole fetch, redirects included. ``FetchStage`` runs fetches on a small
thread pool and hands each outcome to a callback (the pipeline then submits the bytes to the decoder).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError, NewConnectionError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.response import BaseHTTPResponse

from ..errors import JobError
from . import Fetched
from .urls import REDIRECTS, FetchPolicy, Target, answer_error, public_address, too_large

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "adclassify-worker"}


class ForbiddenAddress(Exception):
    """A connection reached a non-public address that no allow-list prefix names (raised before any byte is sent)."""


def _public_only(sock: socket.socket) -> socket.socket:
    peer = sock.getpeername()[0]
    if not public_address(peer):
        sock.close()
        raise ForbiddenAddress(peer)
    return sock


class _PublicHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _public_only(super()._new_conn())


class _PublicHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:  # before the TLS handshake: nothing is sent to a refused peer
        return _public_only(super()._new_conn())


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class PublicPoolManager(PoolManager):
    """A ``PoolManager`` whose connections refuse, once connected, any peer that is not a public address."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


@dataclass(frozen=True)
class FetchLimits:
    """How much and how long one fetch may take; units in names."""

    max_bytes: int
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    total_timeout_s: float = 15.0
    max_redirects: int = 3


class Fetcher:
    """Fetches image URLs; thread-safe, connections pooled per host (``pool_size`` kept per host)."""

    def __init__(self, policy: FetchPolicy, limits: FetchLimits, pool_size: int = 8) -> None:
        self.policy, self.limits = policy, limits
        options = {"num_pools": 64, "maxsize": pool_size, "block": False, "retries": False}
        self.public = PublicPoolManager(**options)  # host names and public IP literals
        self.named = PoolManager(**options)  # IP literals an allow-list prefix names: no address check

    def fetch(self, url: str) -> bytes:
        """The image's bytes, or ``JobError``: ``forbidden_url``, ``fetch_failed`` (deterministic) or
        ``fetch_error`` (retryable: timeouts, connection failures and resets, 5xx)."""
        target = self.policy.check(url)
        if target.scheme == "file":
            return read_file(target, self.limits.max_bytes)
        deadline = time.monotonic() + self.limits.total_timeout_s
        for _ in range(self.limits.max_redirects + 1):
            response, read = self._request(target, deadline), False
            try:
                if response.status not in REDIRECTS:
                    data, read = self._body(response, target, deadline), True
                    return data
                location = response.headers.get("Location")
            finally:
                if not read:  # close rather than drain: the rest of the body may be endless
                    response.close()
                response.release_conn()
            target = self.policy.redirect(target, location)
        raise JobError("fetch_failed", f"{url[:200]}: more than {self.limits.max_redirects} redirects")

    def _request(self, target: Target, deadline: float) -> BaseHTTPResponse:
        left = _left(target, deadline)
        timeout = Timeout(connect=min(self.limits.connect_timeout_s, left), read=min(self.limits.read_timeout_s, left))
        manager = self.named if target.named else self.public
        pool = manager.connection_from_host(target.host, target.port, target.scheme)
        try:
            return pool.urlopen("GET", target.path, headers=HEADERS, redirect=False, retries=False, timeout=timeout,
                                preload_content=False, decode_content=False, release_conn=False,
                                assert_same_host=False)  # fmt: skip
        except ForbiddenAddress as exc:
            raise JobError("forbidden_url", f"{target.url}: {target.host} is at {exc}, not a public address, and no "
                                            "--fetch-allow prefix names that address") from None  # fmt: skip
        except HTTPError as exc:
            raise _past(target, deadline) or transport_error(target.url, exc) from exc

    def _body(self, response: BaseHTTPResponse, target: Target, deadline: float) -> bytes:
        """The whole body, read as it streams: stops at ``max_bytes`` + 1 and at the deadline."""
        max_bytes = self.limits.max_bytes
        refused = answer_error(target.url, response.status, response.headers, max_bytes)
        if refused is not None:
            raise refused
        chunks, size = [], 0
        while True:
            _read_timeout(response, min(self.limits.read_timeout_s, _left(target, deadline)))
            try:
                chunk = response.read1(CHUNK_BYTES, decode_content=False)
            except HTTPError as exc:
                raise _past(target, deadline) or transport_error(target.url, exc) from exc
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:
                raise too_large(target.url, max_bytes, f"passed {max_bytes} bytes while streaming")
            chunks.append(chunk)

    def close(self) -> None:
        """Close every pooled connection."""
        self.public.clear()
        self.named.clear()


def _left(target: Target, deadline: float) -> float:
    """Seconds left before the fetch's total deadline; past it, the retryable ``fetch_error``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _past(target, deadline, slack_s=0.0)
    return left


def _past(target: Target, deadline: float, slack_s: float = 0.01) -> JobError | None:
    """The total deadline's error when it has passed (a socket timeout set to the time left may fire a little
    early), else None."""
    if time.monotonic() < deadline - slack_s:
        return None
    return JobError("fetch_error", f"{target.url}: the fetch took longer than its total deadline", retryable=True)


def _read_timeout(response: BaseHTTPResponse, seconds: float) -> None:
    """Bound the next read by the time left, so a body that trickles cannot outlive the total deadline."""
    conn = response.connection
    if conn is not None and conn.sock is not None:
        conn.sock.settimeout(max(seconds, 0.001))


def transport_error(url: str, exc: HTTPError) -> JobError:
    """A failure below HTTP as a job error: a certificate that does not verify is ``fetch_failed``; time-outs,
    refused, reset or broken connections and name resolution are retryable ``fetch_error``."""
    if isinstance(exc, SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return JobError("fetch_failed", f"{url}: the server's certificate does not verify")
    if isinstance(exc, NewConnectionError):
        what = "could not connect"
    elif isinstance(exc, Urllib3Timeout):
        what = "timed out"
    else:
        what = "connection failed"
    return JobError("fetch_error", f"{url}: {what} ({type(exc).__name__}: {str(exc)[:200]})", retryable=True)


def read_file(target: Target, max_bytes: int) -> bytes:
    """A ``file://`` image under the fetch root: a regular file (no FIFOs, devices or a final symlink), at most
    ``max_bytes``. Missing or unreadable is ``fetch_failed``; other I/O errors are retryable ``fetch_error``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block open
    try:
        fd = os.open(target.path, flags)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise JobError("fetch_failed", f"{target.url}: {exc.strerror}") from None
    except OSError as exc:
        raise JobError("fetch_error", f"{target.url}: {exc}", retryable=True) from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JobError("fetch_failed", f"{target.url}: not a regular file")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large(target.url, max_bytes, f"is over {max_bytes} bytes")
    return data


class FetchStage:
    """``threads`` fetching threads; each URL's outcome (bytes or a ``JobError``) goes to its ``done``."""

    def __init__(self, fetcher: Fetcher, threads: int) -> None:
        self.fetcher = fetcher
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="fetch")

    def submit(self, url: str, done: Callable[[Fetched], None]) -> None:
        """Fetch on a pool thread and call ``done`` there."""
        self.pool.submit(self._run, url, done)

    def _run(self, url: str, done: Callable[[Fetched], None]) -> None:
        start = time.monotonic()
        try:
            data, error = self.fetcher.fetch(url), None
        except JobError as exc:
            data, error = None, exc
        except Exception as exc:  # a pool thread must answer every job: fail this one, not the worker
            log.exception("fetching %s failed unexpectedly", url[:200])
            data, error = None, JobError("fetch_error", f"{type(exc).__name__}: {exc}", retryable=True)
        done(Fetched(data, error, start, (time.monotonic() - start) * 1000))

    def close(self) -> None:
        """Wait for every submitted URL, then close the connections."""
        self.pool.shutdown(wait=True)
        self.fetcher.close()
