"""Trace context across the queue: the producer puts the current W3C ``traceparent`` in a job's meta.

Only when OpenTelemetry is installed (the ``otel`` extra) and a span is active; otherwise ``meta``
is returned untouched, at the cost of one dictionary lookup (the import is tried once). The worker
continues the trace from it (``worker.tracing``).
"""

from __future__ import annotations

from typing import Any

TRACEPARENT = "traceparent"
_propagation: Any = None  # the OpenTelemetry API (trace, propagate) once imported; False when not installed


def _api() -> Any:
    global _propagation
    if _propagation is None:
        try:
            from opentelemetry import propagate, trace

            _propagation = (trace, propagate)
        except ImportError:
            _propagation = False
    return _propagation


def current() -> dict[str, str] | None:
    """The active span's ``traceparent`` (and ``tracestate``) as a carrier, or None when OpenTelemetry is
    absent or no span is active: asked once per enqueue call, whatever its number of jobs."""
    api = _api()
    if not api:
        return None
    trace, propagate = api
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    found = {k: v for k, v in carrier.items() if k in (TRACEPARENT, "tracestate")}
    return found if TRACEPARENT in found else None


def inject(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """``meta`` with the active span's ``traceparent`` (and ``tracestate``) added, or ``meta`` unchanged when
    OpenTelemetry is absent, no span is active, or the caller already set one."""
    return with_trace(meta, current())


def with_trace(meta: dict[str, Any] | None, carrier: dict[str, str] | None) -> dict[str, Any] | None:
    """``meta`` with ``carrier`` (``current()``, asked once for a whole enqueue call) added, unless ``carrier`` is
    None or the caller set a ``traceparent`` of its own."""
    if carrier is None or (meta and TRACEPARENT in meta):
        return meta
    return {**(meta or {}), **carrier}
