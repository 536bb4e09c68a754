"""One trace id from enqueue to finish, across a real producer and a real worker process (console exporter)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider

from producer import ImageRef, Producer

from ..conftest import IMAGES, ROOT, image_bytes, wait_for_workers
from ..imageserver import ImageServer


def test_the_worker_continues_the_producers_trace(redis_url, conn, tiny_model_path, tmp_path):
    images = ImageServer(IMAGES).start()
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "adclassify-test"}
    out = (tmp_path / "worker.out").open("w")
    args = [
        sys.executable,
        "-m",
        "worker",
        "--model",
        str(tiny_model_path),
        "--redis-url",
        redis_url,
        "--idle-wait-ms",
        "200",
        "--batch-size",
        "4",
        "--fetch-allow",
        images.url("/img/"),
    ]
    worker = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.DEVNULL)
    try:
        wait_for_workers(conn)
        with TracerProvider().get_tracer("web").start_as_current_span("POST /ads") as span:
            job_id = Producer(redis_url).enqueue(image_bytes("cat.jpg"))
        assert Producer(redis_url).result(job_id, timeout=60)["ok"]
        by_reference = Producer(redis_url).enqueue(ImageRef(images.url("/img/cat.jpg")))
        assert Producer(redis_url).result(by_reference, timeout=60)["ok"]
    finally:
        images.stop()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        out.close()
    printed = (tmp_path / "worker.out").read_text()
    trace_id = "0x" + format(span.get_span_context().trace_id, "032x")
    assert '"name": "classify"' in printed and trace_id in printed
    assert '"name": "forward"' in printed and '"name": "queue wait"' in printed
    assert printed.count('"name": "fetch"') == 1  # the image_url job's fetch, before its decode
