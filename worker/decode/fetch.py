"""Images by reference: fetch a job's ``image_url`` with pooled urllib3 connections, SSRF-guarded, off the loop.

``Fetcher.fetch`` checks the URL against ``worker.decode.urls.FetchPolicy``, connects (a host name's
address is checked once the socket is connected, so what DNS answered at connect time is what is
judged: no rebinding between a check and the connection), follows at most ``max_redirects``
redirects itself, re-checking every hop, and streams the body up to ``max_bytes``. Deadlines:
``connect_timeout_s`` per connection, ``read_timeout_s`` per silence while reading, and
``total_timeout_s`` for the whole fetch, redirects included. urllib3's timeouts bound one socket
operation each, so the total deadline is kept by ``worker.decode.transport.Deadlines``, which shuts a
fetch's sockets down when its time is up: a server trickling a byte at a time ends there in any phase
(status line, headers, chunk-size lines, body). ``FetchStage`` runs fetches on a small thread pool and hands
each outcome to a callback (the pipeline then submits the bytes to the decoder).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from urllib3 import Timeout
from urllib3.exceptions import HTTPError, LocationValueError, NewConnectionError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.response import BaseHTTPResponse

from ..errors import JobError
from . import Fetched
from .transport import Deadlines, ForbiddenAddress, WatchedPoolManager
from .urls import REDIRECTS, FetchPolicy, Target, answer_error, forbidden, too_large

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "adclassify-worker"}
# urlopen options all off: one request as it is (redirects are followed and checked here), its body streamed raw
REQUEST = dict.fromkeys(("redirect", "retries", "preload_content", "decode_content", "release_conn"), False)
DETERMINISTIC_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.ENXIO, errno.EINVAL})  # file:// paths


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
        self.public = WatchedPoolManager(True, **options)  # host names and public IP literals
        self.named = WatchedPoolManager(False, **options)  # IP literals an allow-list prefix names: no address check
        self.deadlines = Deadlines()

    def fetch(self, url: str) -> bytes:
        """The image's bytes, or ``JobError``: ``forbidden_url``, ``fetch_failed`` (deterministic) or
        ``fetch_error`` (retryable: timeouts, the total deadline, connection failures and resets, 5xx)."""
        target = self.policy.check(url)
        if target.scheme == "file":
            return read_file(target, self.limits.max_bytes)
        deadline = time.monotonic() + self.limits.total_timeout_s
        with self.deadlines.watch(deadline) as watch:
            try:
                data = self._follow(target, deadline)
            except JobError:
                if watch.expired:  # whatever the cut-short answer looked like, the deadline ended it
                    raise _deadline_error(target) from None
                raise
            if watch.expired:
                raise _deadline_error(target)
            return data

    def _follow(self, target: Target, deadline: float) -> bytes:
        """Request ``target`` and the redirects it leads to; the final answer's body."""
        url = target.url
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
        try:
            pool = manager.connection_from_host(target.host, target.port, target.scheme)
            return pool.urlopen("GET", target.path, headers=HEADERS, timeout=timeout, assert_same_host=False, **REQUEST)
        except ForbiddenAddress as exc:
            why = f"{target.host} is at {exc}, not a public address, and no --fetch-allow prefix names that address"
            raise forbidden(f"{target.url}: {why}") from None
        except LocationValueError as exc:  # a host no resolver can be asked about: never fetchable
            raise forbidden(f"{target.url}: not a host name ({str(exc)[:200]})") from None
        except HTTPError as exc:
            raise _past(target, deadline) or transport_error(target.url, exc) from exc

    def _body(self, response: BaseHTTPResponse, target: Target, deadline: float) -> bytes:
        """The whole body, read as it streams: stops at ``max_bytes`` + 1 (and, by ``Deadlines``, at the deadline)."""
        max_bytes = self.limits.max_bytes
        refused = answer_error(target.url, response.status, response.headers, max_bytes)
        if refused is not None:
            raise refused
        chunks, size = [], 0
        while True:
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
        """Close every pooled connection and stop the deadline watchdog."""
        self.public.clear()
        self.named.clear()
        self.deadlines.close()


def _left(target: Target, deadline: float) -> float:
    """Seconds left before the fetch's total deadline; past it, the retryable ``fetch_error``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _deadline_error(target)
    return left


def _past(target: Target, deadline: float, slack_s: float = 0.01) -> JobError | None:
    """The total deadline's error when it has passed (a timeout set to the time left may fire a little early),
    else None."""
    return _deadline_error(target) if time.monotonic() >= deadline - slack_s else None


def _deadline_error(target: Target) -> JobError:
    message = f"{target.url}: the fetch took longer than its total deadline (--fetch-timeout-s)"
    return JobError("fetch_error", message, retryable=True)


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
    """A ``file://`` image under the fetch root: a regular file (no FIFOs, devices, directories or a final
    symlink), at most ``max_bytes``. Missing, unreadable or impossible is ``fetch_failed``; other I/O errors are
    retryable ``fetch_error``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block open
    try:
        fd = os.open(target.path, flags)
    except OSError as exc:
        raise _file_error(target, exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise JobError("fetch_failed", f"{target.url}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise _file_error(target, exc) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise too_large(target.url, max_bytes, f"is over {max_bytes} bytes")
    return data


def _file_error(target: Target, exc: OSError) -> JobError:
    """Missing, not permitted, a directory, a path too long or a symlink swapped in: ``fetch_failed``; anything
    else (EIO, too many open files, ...) may pass: ``fetch_error``."""
    deterministic = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
    if isinstance(exc, deterministic) or exc.errno in DETERMINISTIC_ERRNOS:
        return JobError("fetch_failed", f"{target.url[:300]}: {exc.strerror}")
    return JobError("fetch_error", f"{target.url[:300]}: {exc.strerror}", retryable=True)


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

    def close(self, drop_queued: bool = False) -> None:
        """Wait for every submitted URL (with ``drop_queued``, only those started: a stop must not wait for a
        backlog of slow origins, 15 s each), then close the connections."""
        self.pool.shutdown(wait=True, cancel_futures=drop_queued)
        self.fetcher.close()
