"""A job's call: the task's name, the allow-list, its keyword arguments and their limits (pure, standard library)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .serializer import SerializationError, dumps, loads

DEFAULT_QUEUE = "classify"
TASK_NAME = "worker.tasks.classify"
# The functions a job may name; compared as strings, so a worker never imports what a job names.
ALLOWED_TASKS = frozenset({TASK_NAME})

# Limits on what a job may carry; the worker enforces them again (never trust the producer).
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_META_BYTES = 16 * 1024
# The longest TTL a job's hash may ask for (result_ttl, failure_ttl; RQ takes any integer, -1 for ever): ~68 years.
# Workers keep a longer one this long: Redis refuses an EXPIRE past its clock's range, and a script that meets the
# refusal halfway would stop every job after it.
MAX_TTL_S = 2**31 - 1
MAX_URL_CHARS = 4096
URL_SCHEMES = ("https", "http", "file")


def allowed(func_name: object) -> bool:
    """Whether a job may run this function; compared as a string, so nothing is ever imported."""
    return isinstance(func_name, str) and func_name in ALLOWED_TASKS


class ProtocolError(ValueError):
    """A job whose arguments break the contract (wrong types, missing or extra arguments)."""


class ImageTooLarge(ProtocolError):
    """An image over the size limit, refused before anything is sent: a worker would refuse it too.
    ``error`` is ``{"type": "image_too_large", "message"}``, shaped like a failed job's error (``JobFailed``),
    so a web backend maps both to the same answer."""

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        message = f"the image is {size} bytes, over the limit of {limit}"
        self.error = {"type": "image_too_large", "message": message}
        super().__init__(message)


def check_image_size(size: int, limit: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
    """``ImageTooLarge`` when an image of ``size`` bytes is over ``limit``."""
    if size > limit:
        raise ImageTooLarge(size, limit)


@dataclass(frozen=True)
class ImageRef:
    """An image by reference: the job carries ``image_url`` and the worker fetches it (``https://``,
    ``http://``, or ``file://`` under the worker's ``--fetch-root``), when its allow-list permits."""

    url: str

    def __post_init__(self) -> None:
        check_image_url(self.url)


def check_image_url(url: Any) -> str:
    """``url`` if it can be a job's ``image_url`` (a string, short, scheme https/http/file, a host for
    http(s)), else ``ProtocolError``. Whether the worker may fetch it is the worker's allow-list's call."""
    if not isinstance(url, str):
        raise ProtocolError(f"image_url must be a string, got {type(url).__name__}")
    if len(url) > MAX_URL_CHARS:
        raise ProtocolError(f"image_url is {len(url)} characters, over the limit of {MAX_URL_CHARS}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ProtocolError(f"image_url is not a URL: {exc}") from exc
    if parts.scheme.lower() not in URL_SCHEMES:
        raise ProtocolError(f"image_url must be https://, http:// or file://, got {url[:80]!r}")
    if parts.scheme.lower() != "file" and not parts.hostname:
        raise ProtocolError(f"image_url has no host: {url[:80]!r}")
    return url


def check_meta(meta: Any) -> dict[str, Any]:
    """A job's ``meta`` (None: an empty map) if it is a map that msgpack can send within ``MAX_META_BYTES``, else
    ``ProtocolError``."""
    meta = meta or {}
    if not isinstance(meta, dict):
        raise ProtocolError(f"meta must be a map, not {type(meta).__name__}")
    try:
        size = len(dumps(meta))
    except SerializationError as exc:
        raise ProtocolError(f"meta cannot be sent as msgpack: {exc}") from exc
    if size > MAX_META_BYTES:
        raise ProtocolError(f"meta is {size} bytes, over the limit of {MAX_META_BYTES}")
    return meta


def job_kwargs(image: bytes | ImageRef, meta: dict[str, Any] | None, deadline: float | None = None) -> dict[str, Any]:
    """The keyword arguments of a classify job: ``image`` (bytes) or ``image_url`` (an ``ImageRef``), ``meta``,
    and ``deadline``, a Unix time after which it is not worth running."""
    meta = check_meta(meta)
    kwargs: dict[str, Any] = {"image_url": image.url} if isinstance(image, ImageRef) else {"image": image}
    kwargs["meta"] = meta
    if deadline is not None:
        kwargs["deadline"] = float(deadline)
    return kwargs


def image_source(image: Any, image_url: str | None) -> Any:
    """What ``enqueue(image=..., image_url=...)`` was given: the image, or an ``ImageRef``; exactly one."""
    if (image is None) == (image_url is None):
        raise ProtocolError("give exactly one of image and image_url")
    return image if image_url is None else ImageRef(image_url)


def image_list(images: Iterable[Any], image_urls: Iterable[str] | None) -> list[Any]:
    """``enqueue_many``'s images: ``images`` as given (bytes, paths, or ``ImageRef`` for jobs by reference), or one
    ``ImageRef`` per URL of ``image_urls``; not both."""
    images = list(images)
    if image_urls is None:
        return images
    if images:
        raise ProtocolError("give images or image_urls, not both (to mix them, pass ImageRef(url) among images)")
    return [ImageRef(url) for url in image_urls]


def parse_job_args(args: Any, kwargs: Any) -> tuple[bytes | ImageRef, dict[str, Any]]:
    """Check a job's arguments and return ``(image, meta)``, the image as bytes or, for a job carrying
    ``image_url``, as an ``ImageRef``; or raise ``ProtocolError``."""
    if args:
        raise ProtocolError("classify takes keyword arguments only (image=..., meta=...)")
    if not isinstance(kwargs, dict):
        raise ProtocolError(f"job kwargs must be a map, got {type(kwargs).__name__}")
    extra = sorted(str(k) for k in kwargs if k not in ("image", "image_url", "meta", "deadline"))
    if extra:
        raise ProtocolError(f"unexpected job arguments: {', '.join(extra)}")
    if ("image" in kwargs) == ("image_url" in kwargs):
        raise ProtocolError(
            "missing job argument: image" if "image" not in kwargs else "a job carries image or image_url, not both"
        )
    image = ImageRef(check_image_url(kwargs["image_url"])) if "image_url" in kwargs else kwargs["image"]
    if not isinstance(image, bytes | bytearray | ImageRef):
        raise ProtocolError(f"image must be bytes, got {type(image).__name__}")
    meta = kwargs.get("meta") or {}
    if not isinstance(meta, dict):
        raise ProtocolError(f"meta must be a map, got {type(meta).__name__}")
    deadline = kwargs.get("deadline")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
        raise ProtocolError(f"deadline must be a Unix time in seconds, got {type(deadline).__name__}")
    return (image if isinstance(image, ImageRef) else bytes(image)), meta


def inflate(data: bytes | None, max_bytes: int) -> bytes:
    """RQ's ``data`` field: zlib-compressed or plain; decompressed with a bound (no zip bombs)."""
    if not data:
        raise ValueError("the job hash has no data")
    if len(data) > max_bytes:
        raise ValueError(f"job data is {len(data)} bytes, over the limit of {max_bytes}")
    if len(data) < 2 or data[0] & 0x0F != 8 or (data[0] << 8 | data[1]) % 31:
        return data  # no zlib header (deflate, check bits): stored plain, as our producer stores it
    try:
        inflater = zlib.decompressobj()
        out = inflater.decompress(data, max_bytes)
    except zlib.error:
        return data
    if inflater.unconsumed_tail:
        raise ValueError(f"job data inflates past the limit of {max_bytes} bytes")
    return out


def meta_of(data: bytes | None, max_bytes: int = 32 << 20) -> dict[str, Any] | None:
    """The ``meta`` of a job's call from its hash's ``data`` (RQ's, compressed or not); None when the job is
    gone or its data is unreadable. A result written on a nearly full Redis carries ``meta`` nil: it is here."""
    try:
        call = loads(inflate(data, max_bytes))
    except (ValueError, zlib.error, SerializationError):
        return None
    kwargs = call[3] if isinstance(call, list | tuple) and len(call) == 4 else None
    meta = kwargs.get("meta") if isinstance(kwargs, dict) else None
    return meta if isinstance(meta, dict) else {} if isinstance(kwargs, dict) else None


def clamp_ttl(ttl: int) -> int:
    """A TTL as the scripts can apply it: -1 (for ever) for any negative, at most ``MAX_TTL_S``."""
    return max(-1, min(ttl, MAX_TTL_S))
