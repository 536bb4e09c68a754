"""The contract between producers and workers: names, job arguments and the result map.

Everything here is plain data and standard library, so a web backend can import it without torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .serializer import SerializationError, dumps

DEFAULT_QUEUE = "classify"
TASK_NAME = "worker.tasks.classify"
RESULTS_SUFFIX = ":results"
PROTOCOL_VERSION = 1  # the result map's wire version, written as ``v`` (a result without ``v`` reads as 1)

# Limits on what a job may carry; the worker enforces them again (never trust the producer).
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_META_BYTES = 16 * 1024
MAX_URL_CHARS = 4096
URL_SCHEMES = ("https", "http", "file")

RESULT_KEYS = ("job_id", "ok", "label", "score", "topk", "model", "worker", "timings_ms", "error", "meta")
TIMING_KEYS = ("queue", "decode", "infer", "total")


class ProtocolError(ValueError):
    """A job whose arguments break the contract (wrong types, missing or extra arguments)."""


def results_channel(queue: str) -> str:
    """The pub/sub channel on which results of ``queue`` are published."""
    return f"{queue}{RESULTS_SUFFIX}"


def results_stream(queue: str) -> str:
    """The durable results feed of ``queue``: a capped Redis Stream, one entry per final result, with
    fields ``job_id`` (text) and ``result`` (the same msgpack bytes as the channel's message)."""
    return f"{queue}{RESULTS_SUFFIX}:stream"


DEFAULT_RESULTS_MAXLEN = 100_000  # entries kept in the feed (approximate trim); see RELIABILITY.md


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


def job_kwargs(image: bytes | ImageRef, meta: dict[str, Any] | None, deadline: float | None = None) -> dict[str, Any]:
    """The keyword arguments of a classify job: ``image`` (bytes) or ``image_url`` (an ``ImageRef``), ``meta``,
    and ``deadline``, a Unix time after which it is not worth running."""
    meta = meta or {}
    if not isinstance(meta, dict):
        raise ProtocolError(f"meta must be a map, not {type(meta).__name__}")
    try:
        size = len(dumps(meta))
    except SerializationError as exc:
        raise ProtocolError(f"meta cannot be sent as msgpack: {exc}") from exc
    if size > MAX_META_BYTES:
        raise ProtocolError(f"meta is {size} bytes, over the limit of {MAX_META_BYTES}")
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
        raise ProtocolError("missing job argument: image" if "image" not in kwargs else
                            "a job carries image or image_url, not both")  # fmt: skip
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


def error_info(exc: BaseException | str, message: str | None = None) -> dict[str, str]:
    """The ``error`` member of a result: ``{"type": ..., "message": ...}``."""
    if isinstance(exc, str):
        return {"type": exc, "message": message or ""}
    return {"type": type(exc).__name__, "message": message if message is not None else str(exc)}


def make_result(
    job_id: str,
    *,
    model: str,
    worker: str,
    timings_ms: dict[str, float],
    meta: dict[str, Any] | None,
    topk: list[tuple[str, float]] | None = None,
    error: dict[str, str] | None = None,
    batch: int = 1,
) -> dict[str, Any]:
    """Build the result map; ``ok`` is true exactly when there is no error; ``batch`` is the batch's size."""
    ok = error is None
    pairs = [[label, float(score)] for label, score in (topk or [])]
    return {
        "job_id": job_id,
        "ok": ok,
        "label": pairs[0][0] if ok and pairs else None,
        "score": pairs[0][1] if ok and pairs else None,
        "topk": pairs if ok else [],
        "model": model,
        "worker": worker,
        "timings_ms": {k: round(float(timings_ms.get(k, 0.0)), 3) for k in TIMING_KEYS},
        "error": error,
        "meta": meta or {},
        "batch": batch,
        "v": PROTOCOL_VERSION,
    }


def validate_result(result: Any) -> dict[str, Any]:
    """Check that ``result`` has the shape of a result map; return it or raise ``ProtocolError``."""
    if not isinstance(result, dict):
        raise ProtocolError(f"a result must be a map, got {type(result).__name__}")
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ProtocolError(f"result lacks {', '.join(missing)}")
    if result["ok"] != (result["error"] is None):
        raise ProtocolError("result 'ok' must be true exactly when 'error' is nil")
    version = result.get("v", 1)
    if not isinstance(version, int) or version > PROTOCOL_VERSION:
        raise ProtocolError(f"result wire version {version!r} is newer than this reader's ({PROTOCOL_VERSION})")
    return result


def exc_string_for(error: dict[str, str]) -> str:
    """The text RQ records for a failed job, shaped like a traceback's last line."""
    return f"JobError: {error['type']}: {error['message']}"


def parse_exc_string(exc_string: str | None) -> dict[str, str]:
    """Recover ``{"type", "message"}`` from RQ's failure text (ours, or any Python traceback)."""
    lines = [line for line in (exc_string or "").strip().splitlines() if line.strip()]
    if not lines:
        return {"type": "job_failed", "message": "the job failed without an error message"}
    head, sep, message = lines[-1].partition(": ")
    type_name = head.rsplit(".", 1)[-1].strip()
    if type_name == "JobError":
        kind, sep2, rest = message.partition(": ")
        if sep2 and kind.isidentifier():
            return {"type": kind, "message": rest}
    if not sep or not type_name.isidentifier():
        return {"type": "job_failed", "message": lines[-1]}
    return {"type": type_name, "message": message}
