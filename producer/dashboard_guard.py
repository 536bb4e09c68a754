"""The dashboard's request guard: Host allow-list, HTTP basic auth, no state change on GET, and a
same-origin check on every state change (what a cross-site page or DNS rebinding can't pass).

A browser on the operator's machine reaches a dashboard on loopback, so "it listens on 127.0.0.1"
protects nothing from the pages that browser opens. Every request, in this order:

1. ``Host`` must be on the allow-list (``421``): a DNS-rebinding page sends its own name.
2. With a password, HTTP basic auth (``401``).
3. ``GET``/``HEAD`` on a route that also accepts a state-changing method is refused (``405``):
   rq-dashboard 0.9 requeues every failed job on ``GET /requeue/<queue>``, which an ``<img>`` can do.
4. Any method but ``GET``/``HEAD``/``OPTIONS`` needs ``Origin`` (else ``Referer``) naming an allowed
   host, or, with neither header, the same-origin marker ``X-Requested-With: XMLHttpRequest``
   (``403``). The dashboard's own buttons are jQuery ``$.post`` calls, which send both the marker and
   ``Origin``; a cross-site form or image can set neither, and a cross-site script would need a CORS
   preflight that nothing here approves.

Responses also forbid framing (clickjacking of the buttons) and keep ``Referer`` same-origin.
Pure logic on a request object (``method``, ``headers``, ``authorization``, ``url_rule``); ``install``
hooks it into a Flask app (the only place that imports Flask).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
GET_METHODS = frozenset({"GET", "HEAD"})  # HEAD runs the GET view in Flask: it changes state just the same
MARKER_HEADER = "X-Requested-With"
MARKER_VALUE = "XMLHttpRequest"
DEFAULT_USERNAME = "admin"
CHALLENGE = 'Basic realm="adclassify dashboard", charset="UTF-8"'
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def host_entry(host: str, port: int | None = None) -> str:
    """``host[:port]`` as a ``Host`` header spells it: lower case, an IPv6 address in brackets."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def normalize_allowed_host(entry: str) -> str:
    """An ``--allowed-host`` value (``name``, ``name:port``, ``10.0.0.5:9181``, ``::1``, ``[::1]:9181``)
    as the ``Host`` header that names it. Without a port it matches only a ``Host`` without one
    (the scheme's default port, e.g. behind a reverse proxy on 443)."""
    entry = entry.strip().lower()
    if entry.startswith("[") or entry.count(":") != 1:
        return host_entry(entry)
    name, port = entry.rsplit(":", 1)
    if not port.isdigit():
        raise ValueError(f"bad port in allowed host {entry!r}")
    return host_entry(name, int(port))


def default_allowed_hosts(bind: str, port: int) -> tuple[str, ...]:
    """The bind address, ``localhost``, ``127.0.0.1`` and ``[::1]``, each with ``port``."""
    names = [host_entry(bind)] + [h for h in LOOPBACK_HOSTS if h != host_entry(bind)]
    return tuple(f"{name}:{port}" for name in names)


def is_loopback(bind: str) -> bool:
    """Whether listening on ``bind`` reaches this host only (``127.x``, ``::1``, ``localhost``).
    Other names are not resolved: they count as beyond loopback."""
    if bind.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip().strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: its HTTP status, a one-line reason, extra response headers."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Guard:
    """The rules above for one dashboard: the hosts that name it, and its basic-auth credentials
    (none: no auth)."""

    allowed_hosts: frozenset[str]
    username: str = DEFAULT_USERNAME
    password: str | None = None

    @classmethod
    def build(cls, allowed_hosts: Iterable[str], password: str | None = None, username: str | None = None) -> Guard:
        """A guard from ``--allowed-host`` values (see ``normalize_allowed_host``)."""
        hosts = frozenset(normalize_allowed_host(h) for h in allowed_hosts if h.strip())
        if not hosts:
            raise ValueError("the dashboard needs at least one allowed host")
        return cls(hosts, username or DEFAULT_USERNAME, password or None)

    def check(self, request: Any) -> Refusal | None:
        """``None`` when ``request`` may go on, else why not (see the module doc for the order)."""
        host = request.headers.get("Host", "").strip().lower()
        if host not in self.allowed_hosts:
            return Refusal(421, f"unknown Host {host!r} (allow it with --allowed-host)")
        if self.password is not None and not self._authorized(request.authorization):
            return Refusal(401, "authentication required", {"WWW-Authenticate": CHALLENGE})
        method = request.method.upper()
        rule = getattr(request, "url_rule", None)
        writes = set(rule.methods or ()) - READ_ONLY_METHODS if rule is not None else set()
        if method in GET_METHODS and writes:
            allow = ", ".join(sorted(writes))
            return Refusal(405, f"{method} never changes state here: use {allow}", {"Allow": allow})
        if method not in READ_ONLY_METHODS:
            return self._cross_site(request.headers)
        return None

    def _authorized(self, auth: Any) -> bool:
        if auth is None or getattr(auth, "type", "basic") != "basic":
            return False
        user_ok = hmac.compare_digest((auth.username or "").encode(), self.username.encode())
        password_ok = hmac.compare_digest((auth.password or "").encode(), (self.password or "").encode())
        return user_ok and password_ok

    def _cross_site(self, headers: Any) -> Refusal | None:
        """A state change: its ``Origin`` (else ``Referer``) must name this dashboard; with neither,
        it must carry the same-origin marker."""
        for name in ("Origin", "Referer"):
            value = headers.get(name)
            if value is None:
                continue
            if self.names_this_dashboard(value):
                return None
            return Refusal(403, f"cross-site request refused ({name} {value[:100]!r})")
        if headers.get(MARKER_HEADER, "").lower() == MARKER_VALUE.lower():
            return None
        return Refusal(403, f"a state change needs Origin, Referer or {MARKER_HEADER}: {MARKER_VALUE}")

    def names_this_dashboard(self, url: str) -> bool:
        """Whether an ``Origin``/``Referer`` value is an http(s) URL on an allowed host (``null``: no)."""
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or "@" in parts.netloc:
            return False
        return parts.netloc.lower() in self.allowed_hosts


def install(app: Any, guard: Guard) -> None:
    """Run ``guard`` before every request of the Flask ``app`` (before rq-dashboard's own hooks, so a
    refused request touches no Redis), and add the anti-framing headers to every response."""
    from flask import Response, request

    def refuse_unless_allowed() -> Response | None:
        refusal = guard.check(request)
        if refusal is None:
            return None
        log.warning("dashboard: refused %s %r: %s", request.method, request.path, refusal.reason)
        return Response(refusal.reason + "\n", refusal.status, refusal.headers, mimetype="text/plain")

    def add_security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    app.before_request(refuse_unless_allowed)
    app.after_request(add_security_headers)
