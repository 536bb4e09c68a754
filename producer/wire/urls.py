"""Redis URLs both sides accept, parsed (pure): plain ``redis://`` / ``rediss://`` / ``unix://``, and Sentinel.

``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` names a Sentinel-managed
primary: the hosts are the sentinels, ``service`` the name they monitor (``sentinel monitor <service>
...``), ``user:password`` the data nodes' credentials. ``rediss+sentinel://`` speaks TLS to the data
nodes (and to the sentinels unless ``?sentinel_ssl=0``). Sentinels with their own credentials take
``?sentinel_username=...&sentinel_password=...``. Connecting is each side's own business (redis-py's
``Sentinel``); this module only says what a URL means, and the stable name of the shard it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379


class RedisURLError(ValueError):
    """A URL that names no Redis server this project can reach."""


@dataclass(frozen=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL says."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    sentinel_tls: bool = False


def scheme(url: str) -> str:
    """The URL's scheme, lower case ('' when it has none)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names a Sentinel-managed primary."""
    return scheme(url) in SENTINEL_SCHEMES


def check(url: str) -> str:
    """``url`` if some Redis can be reached through it, else ``RedisURLError`` with one line that says why."""
    if scheme(url) in PLAIN_SCHEMES:
        return url
    if is_sentinel(url):
        parse_sentinel(url)
        return url
    known = ", ".join(f"{s}://" for s in (*PLAIN_SCHEMES, *SENTINEL_SCHEMES))
    hint = f" (try redis://{url})" if not scheme(url) else ""
    raise RedisURLError(f"a Redis URL must start with {known}; got {mask(url)!r}{hint}")


def parse_sentinel(url: str) -> SentinelURL:
    """The parts of a ``redis+sentinel://`` URL; ``RedisURLError`` if it lacks hosts or a service."""
    if not is_sentinel(url):
        raise RedisURLError(f"not a Sentinel URL: {mask(url)!r}")
    rest = url.split("://", 1)[1]
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    credentials, _, hosts = netloc.rpartition("@")
    user, _, password = credentials.partition(":")
    sentinels = tuple(_host_port(part, url) for part in hosts.split(",") if part.strip())
    segments = [unquote(s) for s in path.split("/") if s]
    if not sentinels or not segments:
        raise RedisURLError(f"a Sentinel URL needs host:port[,host:port...]/service[/db]; got {mask(url)!r}")
    try:
        db = int(segments[1]) if len(segments) > 1 else 0
    except ValueError:
        raise RedisURLError(f"the database after the service must be a number; got {mask(url)!r}") from None
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    tls = scheme(url) == "rediss+sentinel"
    return SentinelURL(
        sentinels=sentinels,
        service=segments[0],
        db=db,
        username=unquote(user) or None,
        password=unquote(password) or None,
        tls=tls,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        sentinel_tls=tls and options.get("sentinel_ssl", "1") not in ("0", "false", "no"),
    )


def _host_port(part: str, url: str) -> tuple[str, int]:
    host, _, port = part.strip().rpartition(":")
    if not host:  # no port given
        host, port = part.strip(), str(DEFAULT_SENTINEL_PORT)
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise RedisURLError(f"sentinel address {part!r} needs a numeric port in {mask(url)!r}") from None


def split_urls(text: str) -> list[str]:
    """A comma list of URLs -> the URLs; a Sentinel URL's own commas (between its sentinels) stay inside it:
    a piece without a scheme continues the URL before it."""
    urls: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if urls and "://" not in piece and is_sentinel(urls[-1]):
            urls[-1] += "," + piece
        else:
            urls.append(piece)
    return urls


def shard_name(url: str) -> str:
    """A shard's stable name: ``host:port/db`` for one server (credentials and options left out, so rotating
    a password moves nothing), ``sentinel:service/db`` for a Sentinel-managed primary (a failover moves the
    primary, not the name, so no job id changes shard)."""
    if is_sentinel(url):
        parsed = parse_sentinel(url)
        return f"sentinel:{parsed.service}/{parsed.db}"
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    db = parts.path.strip("/") or "0"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"


def mask(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    masked = f"{head}://{credentials}{at}{hosts}{slash}{tail}"
    for key in ("password", "sentinel_password"):
        masked = _mask_query(masked, key)
    return masked


def _mask_query(url: str, key: str) -> str:
    out, marker = url, f"{key}="
    start = out.find(marker)
    while start != -1:
        end = out.find("&", start)
        end = len(out) if end == -1 else end
        out = out[: start + len(marker)] + "***" + out[end:]
        start = out.find(marker, start + len(marker) + 3)
    return out
