"""A real local HTTP server for the fetch tests: paths that answer well, slowly, wrongly, endlessly or never.

``/img/<name>`` serves ``examples/images/<name>``; the other paths misbehave on purpose (see
``Handler.do_GET``). Handlers that hold a connection open wait on ``release``, never on a sleep, and
``stop()`` sets it, so the server always shuts down at once.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bench.devserver import free_port

CHUNK = b"\xff" * 16384


class ImageServer:
    """``http://127.0.0.1:<port>/...`` in a thread; ``hits`` counts requests per path, ``endless_sent`` the
    bytes the endless body wrote before its client went away (``endless_done`` is set then)."""

    def __init__(self, images: Path) -> None:
        self.images = images
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()  # ends every held connection
        self.endless_done = threading.Event()
        self.endless_sent = 0
        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.httpd.daemon_threads = True
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

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the fetcher's pool reuses connections

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
                server.hits[path] += 1
                if path.startswith("/img/") and (server.images / path[5:]).is_file():
                    self.answer(200, "image/jpeg", (server.images / path[5:]).read_bytes())
                elif path == "/page.html":
                    self.answer(200, "text/html", b"<html>not an image</html>")
                elif path == "/octet.jpg":
                    self.answer(200, "application/octet-stream", (server.images / "cat.jpg").read_bytes())
                elif path in ("/missing.jpg", "/unavailable.jpg"):
                    self.answer(404 if path == "/missing.jpg" else 503, "text/plain", b"no")
                elif path in ("/redirect", "/loop"):  # /redirect?to=LOCATION; /loop redirects to itself
                    self.send_response(302)
                    self.send_header("Location", query.get("to", ["/loop"])[0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/slow.jpg":  # no answer until released: the read timeout fires first
                    server.release.wait(60)
                    self.answer(200, "image/jpeg", b"late")
                elif path == "/declared-big.jpg":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(1 << 40))
                    self.end_headers()
                elif path == "/endless.jpg":
                    self.endless()
                elif path == "/trickle.jpg":
                    self.trickle()
                elif path == "/reset.jpg":  # RST instead of an answer
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                else:
                    self.answer(404, "text/plain", b"no such path")

            def answer(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def endless(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    while not server.release.is_set():
                        self.wfile.write(CHUNK)
                        server.endless_sent += len(CHUNK)
                except OSError:  # the client hung up
                    pass
                finally:
                    server.endless_done.set()

            def trickle(self) -> None:  # a byte every 50 ms: no read ever times out, the whole fetch does
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                try:
                    while not server.release.wait(0.05):
                        self.wfile.write(b"\xff")
                        self.wfile.flush()
                except OSError:
                    pass

        return Handler
