"""Traces across the queue, worker side: each job's spans continue the producer's trace (``traceparent`` in meta).

Off by default and free when off: tracing is on only when the OpenTelemetry SDK is installed (the
``otel`` extra) and ``OTEL_TRACES_EXPORTER`` names an exporter (``console``, or ``otlp`` with the OTLP
exporter package), configured by the standard ``OTEL_*`` variables (``OTEL_SERVICE_NAME``, the
exporter's own). Spans are recorded when a batch's outcomes are built, from times the pipeline
already keeps: per job a ``classify`` span (child of the producer's span) with ``queue wait``,
``fetch`` (``image_url`` jobs), ``decode`` and ``finish`` children, and per batch one ``forward`` span
linked to every job's span.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


class Tracing:
    """Records the spans of finished batches; ``enabled`` is False when tracing is off (then nothing runs)."""

    def __init__(self, tracer: Any = None, propagate: Any = None, trace: Any = None) -> None:
        self.tracer, self.propagate, self.trace = tracer, propagate, trace
        self.enabled = tracer is not None

    @classmethod
    def from_environment(cls, service: str = "adclassify-worker") -> Tracing:
        """On when ``OTEL_TRACES_EXPORTER`` names an exporter and the SDK is installed; else off."""
        exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if not exporter_name or exporter_name == "none" or os.environ.get("OTEL_SDK_DISABLED") == "true":
            return cls()
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        except ImportError:
            log.warning(
                "OTEL_TRACES_EXPORTER=%s but the OpenTelemetry SDK is not installed (the otel extra)", exporter_name
            )
            return cls()
        if exporter_name == "console":
            exporter: Any = ConsoleSpanExporter()
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter()
            except ImportError:
                log.warning("OTEL_TRACES_EXPORTER=%s needs opentelemetry-exporter-otlp: tracing off", exporter_name)
                return cls()
        name = os.environ.get("OTEL_SERVICE_NAME", service)
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        return cls(trace.get_tracer("adclassify.worker"), propagate, trace)

    def record_batch(self, jobs: Sequence[dict[str, Any]], forward_ms: float) -> None:
        """Spans for one finished batch. Each job: ``job_id``, ``meta`` (may carry ``traceparent``),
        ``enqueued_at``/``started_at`` (Unix s), ``fetch_ms`` (``image_url`` jobs), ``decode_ms``, ``ok``."""
        if not self.enabled:
            return
        now_ns = time.time_ns()
        links = []
        for job in jobs:
            context = self.propagate.extract(job.get("meta") or {})
            start_ns = int((job.get("enqueued_at") or job["started_at"]) * 1e9)
            started_ns = int(job["started_at"] * 1e9)
            span = self.tracer.start_span(
                "classify",
                context=context,
                start_time=start_ns,
                attributes={"job.id": job["job_id"], "job.ok": bool(job["ok"])},
            )
            inner = self.trace.set_span_in_context(span)
            self.tracer.start_span("queue wait", context=inner, start_time=start_ns).end(end_time=started_ns)
            decode_start = started_ns
            if job.get("fetch_ms"):  # an image_url job: fetched, then decoded
                decode_start = started_ns + int(job["fetch_ms"] * 1e6)
                self.tracer.start_span("fetch", context=inner, start_time=started_ns).end(end_time=decode_start)
            if job.get("decode_ms"):
                decode_end = decode_start + int(job["decode_ms"] * 1e6)
                self.tracer.start_span("decode", context=inner, start_time=decode_start).end(end_time=decode_end)
            self.tracer.start_span("finish", context=inner, start_time=now_ns).end(end_time=now_ns)
            span.end(end_time=now_ns)
            links.append(self.trace.Link(span.get_span_context()))
        forward_start = now_ns - int(forward_ms * 1e6)
        self.tracer.start_span(
            "forward", start_time=forward_start, links=links, attributes={"batch.size": len(jobs)}
        ).end(end_time=now_ns)


def trace_fields(item: Any, result: dict[str, Any]) -> dict[str, Any]:
    """What ``record_batch`` needs of one pipeline item and its result."""
    job = item.job
    return {
        "job_id": job.job_id,
        "meta": item.meta,
        "enqueued_at": job.enqueued_at,
        "started_at": job.started_at,
        "fetch_ms": item.fetch_ms,
        "decode_ms": item.decode_ms if item.fetched else 0.0,  # a failed fetch decoded nothing
        "ok": result["ok"],
    }
