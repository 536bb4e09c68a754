"""A real local HTTP server for the fetch tests: paths that answer well, slowly, wrongly, endlessly or never.

``/img/<name>`` serves ``<images>/<name>``; the other paths misbehave on purpose (see ``Handler.ROUTES``).
Handlers that hold a connection open wait on ``release``, never on a sleep, and ``stop()`` sets it, so the
server always shuts down at once. The trickling answers send one byte every ``trickle_every_s``, so no single
read ever times out: only a deadline on the whole fetch ends them.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

CHUNK = b"\xff" * 16384
TLS_RECORD_START = b"\x16\x03\x03\x40\x00"  # a handshake record of 16 KB: a TLS client waits for all of it


class ImageServer:
    """``http://127.0.0.1:<port>/...`` in a thread; ``hits`` counts requests per path (``tls`` for TLS hellos),
    ``endless_sent`` the bytes the endless body wrote before its client went away (``endless_done`` is set
    then), ``hung_up`` the trickling answers (by path, or ``tls``) whose client went away."""

    def __init__(self, images: Path, trickle_every_s: float = 0.05) -> None:
        self.images = images
        self.trickle_every_s = trickle_every_s
        self.hits: Counter[str] = Counter()
        self.hung_up: Counter[str] = Counter()
        self.release = threading.Event()  # ends every held connection
        self.endless_done = threading.Event()
        self.endless_sent = 0
        self.httpd = _HTTPServer(self)
        self.port = self.httpd.server_address[1]
        self.silent = socket.create_server(("127.0.0.1", 0), backlog=16)  # listens, never accepts: never answers
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), name="imageserver", daemon=True)

    def url(self, path: str) -> str:
        """An absolute URL on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def silent_url(self) -> str:
        """A URL whose server accepts the TCP connection (the kernel does) and never answers."""
        return f"http://127.0.0.1:{self.silent.getsockname()[1]}/never.jpg"

    def start(self) -> ImageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.silent.close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: ImageServer) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.owner = owner


class Handler(BaseHTTPRequestHandler):
    """One connection to an ``ImageServer``."""

    protocol_version = "HTTP/1.1"  # keep-alive: the fetcher's pool reuses connections
    server: _HTTPServer

    def log_message(self, *args: object) -> None:
        pass

    def handle_one_request(self) -> None:
        """A TLS ClientHello (https:// to this plain server) is answered by the start of a TLS record whose
        body trickles: the handshake never completes and no read of it times out."""
        try:
            first = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:  # the client reset the connection between requests
            first = b""
        if not first:
            self.close_connection = True
        elif first == b"\x16":
            self.server.owner.hits["tls"] += 1
            self.trickle_raw("tls", itertools.chain(TLS_RECORD_START, itertools.repeat(0)))
        else:
            super().handle_one_request()

    def do_GET(self) -> None:
        owner, path = self.server.owner, urlsplit(self.path).path
        owner.hits[path] += 1
        if path.startswith("/img/") and (owner.images / path[5:]).is_file():
            self.answer(200, "image/jpeg", (owner.images / path[5:]).read_bytes())
        elif path in self.ROUTES:
            self.ROUTES[path](self)
        else:
            self.answer(404, "text/plain", b"no such path")

    def answer(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def page(self) -> None:
        self.answer(200, "text/html", b"<html>not an image</html>")

    def octet(self) -> None:
        self.answer(200, "application/octet-stream", (self.server.owner.images / "cat.jpg").read_bytes())

    def missing(self) -> None:
        self.answer(404, "text/plain", b"no")

    def unavailable(self) -> None:
        self.answer(503, "text/plain", b"no")

    def redirect(self) -> None:
        """``/redirect?to=LOCATION``; ``/loop`` redirects to itself."""
        self.send_response(302)
        self.send_header("Location", parse_qs(urlsplit(self.path).query).get("to", ["/loop"])[0])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def slow(self) -> None:
        """No answer until released: the read timeout fires first."""
        self.server.owner.release.wait(60)
        self.answer(200, "image/jpeg", b"late")

    def declared_big(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(1 << 40))
        self.end_headers()

    def endless(self) -> None:
        owner = self.server.owner
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            while not owner.release.is_set():
                self.wfile.write(CHUNK)
                owner.endless_sent += len(CHUNK)
        except OSError:  # the client hung up
            pass
        finally:
            owner.endless_done.set()

    def reset(self) -> None:
        """RST instead of an answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def trickle_body(self) -> None:
        """A body of 100 000 bytes, one at a time."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.trickle_raw("/trickle.jpg", itertools.repeat(255))

    def trickle_head(self) -> None:
        """The status line, then a header line that never ends."""
        self.trickle_raw("/trickle-head.jpg", itertools.chain(b"HTTP/1.1 200 OK\r\nX-Slow: ", itertools.repeat(97)))

    def trickle_chunked(self) -> None:
        """A chunked body: one chunk, then a chunk-size line of endless leading zeros."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.wfile.write(head + b"4\r\n\xff\xd8\xff\xe0\r\n")
        self.trickle_raw("/trickle-chunked.jpg", itertools.repeat(48))

    def trickle_raw(self, name: str, data: Iterable[int]) -> None:
        """Write ``data`` a byte at a time, every ``trickle_every_s``, until released or hung up on."""
        owner = self.server.owner
        self.close_connection = True
        try:
            for byte in data:
                if owner.release.wait(owner.trickle_every_s):
                    return
                self.wfile.write(bytes((byte,)))
        except OSError:
            owner.hung_up[name] += 1

    ROUTES: ClassVar[Mapping[str, Callable[[Handler], None]]] = {
        "/page.html": page,
        "/octet.jpg": octet,
        "/missing.jpg": missing,
        "/unavailable.jpg": unavailable,
        "/redirect": redirect,
        "/loop": redirect,
        "/slow.jpg": slow,
        "/declared-big.jpg": declared_big,
        "/endless.jpg": endless,
        "/reset.jpg": reset,
        "/trickle.jpg": trickle_body,
        "/trickle-head.jpg": trickle_head,
        "/trickle-chunked.jpg": trickle_chunked,
    }
