"""Which image URLs a worker may fetch, and which answers it accepts: pure policy, no network.

``worker.decode.fetch`` asks ``FetchPolicy.check`` before the first request and before every
redirect hop, and ``public_address`` about the address each connection actually reached (after DNS).
Every refusal is a ``JobError``: ``forbidden_url`` (the policy says no), ``fetch_failed`` (a
deterministic bad answer: never retried) or ``fetch_error`` (worth a retry).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from ..errors import JobError

HTTP_SCHEMES = ("https", "http")
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECTS = frozenset({301, 302, 303, 307, 308})
SHARED = ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
NAT64 = ip_network("64:ff9b::/96")


def forbidden(message: str) -> JobError:
    """A URL the policy refuses (deterministic: never retried)."""
    return JobError("forbidden_url", message)


def public_address(text: str) -> bool:
    """Whether ``text`` (an IP address) may be fetched without an allow-list prefix that names it: not
    loopback, link-local, private (RFC 1918, ULA), shared (CGNAT), multicast, unspecified or reserved.
    IPv4 inside IPv6 (mapped, 6to4, Teredo, NAT64) is judged as that IPv4 address."""
    addr = ip_address(text.split("%", 1)[0])  # a link-local IPv6 peer may carry a %scope
    if isinstance(addr, IPv6Address):
        inner = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if inner is None and addr in NAT64:
            inner = IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is not None:
            return public_address(str(inner))
    kinds = (addr.is_loopback, addr.is_link_local, addr.is_private, addr.is_multicast, addr.is_unspecified)
    bad = any(kinds) or addr.is_reserved or (isinstance(addr, IPv4Address) and addr in SHARED)
    return addr.is_global and not bad


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address literal (not a name to resolve)."""
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Target:
    """A checked URL. ``path``: the request target (path and query) for http(s), the resolved file for
    ``file``. ``named``: an allow-list prefix names this host as an IP literal, so it may be non-public."""

    url: str
    scheme: str
    host: str = ""
    port: int = 0
    path: str = "/"
    named: bool = False


@dataclass(frozen=True)
class Prefix:
    """One ``--fetch-allow`` entry: ``https://`` (any host), ``https://cdn.example.com/ads/``, ``http://10.0.0.5:8080/``."""

    scheme: str
    host: str | None  # None: any host
    port: int
    path: str

    @classmethod
    def parse(cls, text: str) -> Prefix:
        """Parse one entry; ``ValueError`` when it is not an http(s) prefix we can match exactly."""
        parts = urlsplit(text.strip())
        scheme = parts.scheme.lower()
        if scheme not in HTTP_SCHEMES or "@" in parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"--fetch-allow {text!r}: a prefix is https://[host[:port]][/path] or http://...")
        host = _host(parts.hostname) if parts.hostname else None
        if host is None and (parts.netloc or parts.path):
            raise ValueError(f"--fetch-allow {text!r}: a prefix with a path needs a host")
        return cls(scheme, host, parts.port or DEFAULT_PORTS[scheme], parts.path or "/")

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        """Whether a URL with these (normalised) parts starts with this prefix."""
        if scheme != self.scheme:
            return False
        return self.host is None or (host == self.host and port == self.port and path.startswith(self.path))


@dataclass(frozen=True)
class FetchPolicy:
    """``--fetch-allow`` prefixes for http(s), ``--fetch-root`` for ``file://``; both empty: nothing is fetched."""

    allow: tuple[Prefix, ...] = ()
    root: Path | None = None

    @classmethod
    def parse(cls, allow: str = "", root: str = "") -> FetchPolicy:
        """From the flags' text (comma-separated prefixes; a directory); ``ValueError`` when either is wrong."""
        prefixes = tuple(Prefix.parse(p) for p in allow.split(",") if p.strip())
        if root and not Path(root).is_dir():
            raise ValueError(f"--fetch-root {root!r} is not a directory")
        return cls(prefixes, Path(os.path.realpath(root)) if root else None)

    @property
    def enabled(self) -> bool:
        """Whether any URL can pass."""
        return bool(self.allow or self.root)

    def check(self, url: str) -> Target:
        """The URL as a ``Target`` if the policy lets it be fetched; else ``forbidden_url``."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise forbidden(f"{url[:200]!r} is not a URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme == "file":
            return self._file(url, parts.netloc, parts.path)
        if scheme not in HTTP_SCHEMES or not parts.hostname:
            raise forbidden(f"{url[:200]!r}: only https://, http:// and file:// URLs are fetched")
        if "@" in parts.netloc:
            raise forbidden(f"{url[:200]!r}: URLs with credentials are not fetched")
        host, port = _host(parts.hostname), port or DEFAULT_PORTS[scheme]
        path = parts.path or "/"
        if _dot_segments(path):
            raise forbidden(f"{url[:200]!r}: '.' and '..' path segments are not fetched")
        matching = [p for p in self.allow if p.matches(scheme, host, port, path)]
        if not matching:
            raise forbidden(f"{url[:200]!r} matches no --fetch-allow prefix (WORKER_FETCH_ALLOW)")
        named = is_ip(host) and any(p.host == host for p in matching)
        if is_ip(host) and not named and not public_address(host):
            raise forbidden(f"{url[:200]!r}: {host} is not a public address and no --fetch-allow prefix names it")
        target = path + (f"?{parts.query}" if parts.query else "")
        netloc = (f"[{host}]" if ":" in host else host) + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")
        return Target(f"{scheme}://{netloc}{target}", scheme, host, port, target, named)

    def _file(self, url: str, netloc: str, path: str) -> Target:
        if self.root is None:
            raise forbidden(f"{url[:200]!r}: file:// URLs are fetched only under --fetch-root (WORKER_FETCH_ROOT)")
        if netloc not in ("", "localhost"):
            raise forbidden(f"{url[:200]!r}: a file:// URL names no host")
        try:  # symlinks resolved: a link may not lead out of the root
            resolved = Path(os.path.realpath(unquote(path, errors="strict")))
        except (ValueError, OSError) as exc:  # a NUL byte, bytes that are not UTF-8, a link loop, ...
            raise forbidden(f"{url[:200]!r} names no file: {exc}") from None
        if not resolved.is_relative_to(self.root):
            raise forbidden(f"{url[:200]!r} is outside --fetch-root {str(self.root)!r}")
        return Target(url, "file", path=str(resolved))

    def redirect(self, current: Target, location: str | None) -> Target:
        """The next hop of a redirect from ``current``, checked like a new URL: a hop that leaves the
        allow-list (or http(s)) is ``forbidden_url``; a redirect without ``Location`` is ``fetch_failed``."""
        if not location:
            raise JobError("fetch_failed", f"{current.url}: a redirect without a Location header")
        hop = urljoin(current.url, location.strip())
        if urlsplit(hop).scheme.lower() not in HTTP_SCHEMES:
            raise forbidden(f"{current.url} redirects to {hop[:200]!r}: only http(s) redirects are followed")
        try:
            return self.check(hop)
        except JobError as exc:
            raise forbidden(f"{current.url} redirects out of the allow-list: {exc.message}") from None


def answer_error(url: str, status: int, headers: Mapping[str, str], max_bytes: int) -> JobError | None:
    """What is wrong with a (non-redirect) answer before its body is read, or None: 5xx is a retryable
    ``fetch_error``; any other non-2xx, a body not ``image/*``, content-encoded or declared over
    ``max_bytes`` is ``fetch_failed``."""
    if status >= 500:
        return JobError("fetch_error", f"{url}: HTTP {status}", retryable=True)
    if not 200 <= status < 300:
        return JobError("fetch_failed", f"{url}: HTTP {status}")
    kind = headers.get("Content-Type", "")
    if not kind.strip().lower().startswith("image/"):
        return JobError("fetch_failed", f"{url}: content type {kind[:80]!r} is not image/*")
    if headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        return JobError("fetch_failed", f"{url}: content-encoded bodies are not accepted (we ask for identity)")
    declared = headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        return too_large(url, max_bytes, f"declares {declared} bytes")
    return None


def too_large(url: str, max_bytes: int, how: str) -> JobError:
    """A body over ``--max-image-bytes`` (deterministic)."""
    return JobError("fetch_failed", f"{url}: the body {how}, over --max-image-bytes ({max_bytes}); not read further")


def _host(hostname: str) -> str:
    """A host as compared: lowercase, without a trailing dot."""
    return hostname.lower().rstrip(".")


def _dot_segments(path: str) -> bool:
    """Whether a path has '.' or '..' segments, also percent-encoded or behind backslashes (servers normalise
    them, so ``/ads/../admin`` would match the prefix ``/ads/`` and fetch ``/admin``)."""
    return any(seg in (".", "..") for seg in unquote(path).replace("\\", "/").split("/"))
