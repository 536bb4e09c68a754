"""The sockets under the fetcher: connections that refuse non-public peers, and the watchdog that keeps each fetch's
total deadline.

urllib3's timeouts bound one socket operation each: a server that sends a byte a little more often than the
read timeout holds a read of the status line, a header, a chunk-size line or the body forever. ``Deadlines``
runs one thread that shuts a fetch's sockets down when its deadline passes, so a blocked read returns at once
whatever phase it is in; connections made by ``WatchedPoolManager`` put their socket under the deadline of
the fetch running in their context (``Deadlines.watch``) when they start reading an answer. Connecting (and
a TLS handshake, which CPython bounds as a whole) is bounded by the connect timeout the fetcher sets to at
most the time left.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, LocationParseError, NameResolutionError, NewConnectionError
from urllib3.response import HTTPResponse
from urllib3.util.connection import allowed_gai_family

from .urls import public_address

log = logging.getLogger(__name__)


class Watch:
    """One fetch's deadline and the sockets it reads from. Each socket is watched through a duplicate descriptor
    this object owns, so shutting it down never reaches a descriptor number the fetch has closed meanwhile and
    the kernel has handed on; a shutdown reaches the connection itself, so the fetch's blocked read returns."""

    def __init__(self, deadline: float, lock: threading.Condition) -> None:
        self.deadline = deadline
        self.expired = False
        self._lock = lock
        self._watched: list[socket.socket] = []  # the fetch's own sockets, to attach each once
        self._copies: list[socket.socket] = []

    def attach(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline (at once if it has passed)."""
        with self._lock:
            if any(s is sock for s in self._watched):
                return
            self._watched.append(sock)
            self._copies.append(socket.fromfd(sock.fileno(), sock.family, sock.type, sock.proto))
            if self.expired:
                self._shut_down()

    def expire(self) -> None:
        """The deadline has passed: shut every watched socket down (called with the lock held)."""
        self.expired = True
        self._shut_down()
        log.debug("a fetch reached its total deadline: its %d socket(s) are shut down", len(self._copies))

    def _shut_down(self) -> None:
        for copy in self._copies:
            with suppress(OSError):  # not connected (any more): nothing to wake
                copy.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """The fetch is over: close the duplicates (the sockets themselves stay the pool's)."""
        with self._lock:
            for copy in self._copies:
                copy.close()
            self._watched.clear()
            self._copies.clear()


_CURRENT: ContextVar[Watch | None] = ContextVar("fetch_watch", default=None)


class Deadlines:
    """A watchdog thread (started at the first ``watch``) that ends each fetch at its total deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: set[Watch] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def watch(self, deadline: float) -> Iterator[Watch]:
        """In the block, the sockets that this thread's watched connections read answers from are shut down at
        ``deadline``; ``expired`` then says so (an answer cut short that way may look complete: never trust it)."""
        watch = Watch(deadline, self._cond)
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fetch-deadlines", daemon=True)
                self._thread.start()
            self._watches.add(watch)
            self._cond.notify()
        token = _CURRENT.set(watch)
        try:
            yield watch
        finally:
            _CURRENT.reset(token)
            with self._cond:
                self._watches.discard(watch)
            watch.release()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                pending = [w for w in self._watches if not w.expired]
                for watch in pending:
                    if watch.deadline <= now:
                        watch.expire()
                next_s = min((w.deadline for w in pending if not w.expired), default=now + 60.0) - now
                self._cond.wait(max(next_s, 0.001))

    def close(self) -> None:
        """Stop the watchdog thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()


def _watch_socket(sock: socket.socket | None) -> None:
    """Put ``sock`` under the deadline of the fetch running in this context, if any."""
    watch = _CURRENT.get()
    if watch is not None and sock is not None:
        watch.attach(sock)


class ForbiddenAddress(Exception):
    """A connection reached a non-public address that no allow-list prefix names (raised before any byte is sent)."""


def _public_only(sock: socket.socket) -> socket.socket:
    peer = sock.getpeername()[0]
    if not public_address(peer):
        sock.close()
        raise ForbiddenAddress(peer)
    return sock


def _connect_public(conn: HTTPConnection) -> socket.socket:
    """urllib3's ``create_connection`` with each address the name resolves to checked before it is connected to:
    a refused address is never connected to, so whether a port behind it is open (answered, refused, silent)
    shows in no job's error. The socket is checked again once connected (``_public_only``)."""
    refused, error, host = None, None, conn._dns_host.strip("[]")
    try:
        host.encode("idna")
    except UnicodeError:  # as urllib3's: no resolver can be asked about it
        raise LocationParseError(f"'{host}', label empty or too long") from None
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, conn.port, allowed_gai_family(), socket.SOCK_STREAM
    ):
        if not public_address(address[0]):
            refused = refused or address[0]
            continue
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            if isinstance(conn.timeout, int | float):
                sock.settimeout(conn.timeout)
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(address)
            return _public_only(sock)
        except OSError as exc:
            error = exc
            sock.close()
    if error is None and refused is not None:
        raise ForbiddenAddress(refused)
    raise error or OSError(f"{conn.host} resolved to no address")


def _new_public_conn(conn: HTTPConnection) -> socket.socket:
    """``HTTPConnection._new_conn``'s errors, around ``_connect_public``."""
    try:
        return _connect_public(conn)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    except TimeoutError as exc:
        raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out ({conn.timeout} s)") from exc
    except OSError as exc:
        raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> HTTPResponse:  # the request is sent: from here on every read is watched
        _watch_socket(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):  # the handshake is bounded by the connect timeout
    def getresponse(self) -> HTTPResponse:
        _watch_socket(self.sock)
        return super().getresponse()


class _PublicHTTPConnection(_WatchedHTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _new_public_conn(self)


class _PublicHTTPSConnection(_WatchedHTTPSConnection):
    def _new_conn(self) -> socket.socket:  # before the TLS handshake: nothing is sent to a refused peer
        return _new_public_conn(self)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class WatchedPoolManager(PoolManager):
    """A ``PoolManager`` whose connections keep ``Deadlines``; with ``public_only``, they also refuse, once
    connected, any peer that is not a public address."""

    def __init__(self, public_only: bool, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = (
            {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}
            if public_only
            else {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
        )
