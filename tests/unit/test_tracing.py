"""Traces across the queue: the producer's traceparent in meta, the worker's spans continuing that trace."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from producer import tracing as producer_tracing
from worker.tracing import Tracing


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_the_producer_adds_a_traceparent_only_inside_an_active_span(spans):
    provider, _ = spans
    assert producer_tracing.inject({"ad": 1}) == {"ad": 1}  # no active span: meta untouched
    with provider.get_tracer("web").start_as_current_span("POST /ads") as span:
        meta = producer_tracing.inject({"ad": 1})
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert meta["ad"] == 1 and meta["traceparent"].split("-")[1] == trace_id
    assert producer_tracing.inject({"traceparent": "00-kept"}) == {"traceparent": "00-kept"}


def test_the_worker_continues_the_trace_and_links_the_batch_to_every_job(spans):
    provider, exporter = spans
    with provider.get_tracer("web").start_as_current_span("POST /ads") as web_span:
        meta = producer_tracing.inject({})
    tracing = Tracing(provider.get_tracer("worker"), propagate, trace)
    jobs = [
        {"job_id": "a", "meta": meta, "enqueued_at": 100.0, "started_at": 100.5, "decode_ms": 3.0, "ok": True},
        {"job_id": "b", "meta": {}, "enqueued_at": 100.1, "started_at": 100.5, "decode_ms": 2.0, "ok": False},
        {"job_id": "c", "meta": {}, "enqueued_at": 100.1, "started_at": 100.5, "fetch_ms": 40.0, "decode_ms": 2.0,
         "ok": True},  # an image_url job
    ]  # fmt: skip
    tracing.record_batch(jobs, forward_ms=7.5)
    finished = {(s.name, s.attributes.get("job.id")): s for s in exporter.get_finished_spans()}
    job_a = finished["classify", "a"]
    assert job_a.context.trace_id == web_span.get_span_context().trace_id
    assert job_a.parent.span_id == web_span.get_span_context().span_id
    queue_wait = next(
        s for s in exporter.get_finished_spans() if s.name == "queue wait" and s.parent.span_id == job_a.context.span_id
    )
    assert (queue_wait.end_time - queue_wait.start_time) == pytest.approx(0.5e9, rel=1e-6)
    assert (
        finished["classify", "b"].context.trace_id != web_span.get_span_context().trace_id
    )  # no traceparent: new trace
    forward = finished["forward", None]
    assert {link.context.span_id for link in forward.links} == {
        finished["classify", job].context.span_id for job in "abc"
    }
    job_c = finished["classify", "c"].context.span_id
    children = {s.name: s for s in exporter.get_finished_spans() if s.parent and s.parent.span_id == job_c}
    assert set(children) == {"queue wait", "fetch", "decode", "finish"}
    assert children["fetch"].end_time == children["decode"].start_time  # fetched, then decoded
    assert children["fetch"].end_time - children["fetch"].start_time == pytest.approx(40e6, rel=1e-6)
    assert "fetch" not in {
        s.name for s in exporter.get_finished_spans() if s.parent and s.parent.span_id == job_a.context.span_id
    }


def test_tracing_is_off_without_an_exporter_and_records_nothing(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    off = Tracing.from_environment()
    assert not off.enabled
    off.record_batch([{"job_id": "a", "started_at": 1.0}], 1.0)  # no error, nothing done
