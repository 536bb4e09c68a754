"""The result map (a job's RQ return value and the message on the channel and the feed), its error
shapes, and the templates the store's scripts complete for results they build themselves."""

from __future__ import annotations

from typing import Any

from .jobs import ProtocolError
from .serializer import dumps

PROTOCOL_VERSION = 1  # the result map's wire version, written as ``v`` (a result without ``v`` reads as 1)
RESULT_KEYS = ("job_id", "ok", "label", "score", "topk", "model", "worker", "timings_ms", "error", "meta")
TIMING_KEYS = ("queue", "decode", "infer", "total")
DEFAULT_RESULTS_MAXLEN = 100_000  # entries kept in the results feed (approximate trim); see RELIABILITY.md
# On a nearly full Redis (90% of maxmemory) a result whose message is this long or longer, with a meta, is
# written to RQ's result stream and the feed with ``meta`` nil: the meta stays once, in the job's data
# (``kwargs["meta"]``), where the producer's readers take it from (``with_meta``). RELIABILITY.md.
LEAN_AFTER_BYTES = 1024

# Errors the store's scripts answer themselves (no worker code runs for these jobs).
GONE = {"type": "job_gone", "message": "the job's data expired or was deleted before it ran"}
CANCELED = {"type": "canceled", "message": "the job was canceled while it ran; its result was discarded"}


def poison_error(max_deliveries: int) -> dict[str, str]:
    """The error of a job lost with its worker ``max_deliveries`` times."""
    return {
        "type": "poison",
        "message": f"the job was lost with its worker {max_deliveries} times (it may crash the worker); not retried",
    }


def script_template(error: dict[str, str], worker: str) -> tuple[int, bytes]:
    """A failed result for any job id, as the scripts complete it (``result_for`` in the Lua): the map's
    size and its pairs other than ``job_id``, msgpack-packed (a map is its header, then its keys and
    values in turn)."""
    result = make_result("", model="", worker=worker, timings_ms={}, meta={}, error=error)
    return len(result), b"".join(dumps(key) + dumps(value) for key, value in result.items() if key != "job_id")


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
