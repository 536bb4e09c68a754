"""The result cache for repeated photos, with real workers: a repeat is answered without queueing and
marked cached; a new model version never serves the old version's entry; a batch holding one photo
twice runs it once; the producer only reads."""

from __future__ import annotations

import dataclasses

import pytest

from producer import Producer
from producer.wire.keys import CACHE_PREFIX as PREFIX
from worker.decode.cpu import Preprocess
from worker.export import ExportSpec, export

from ..conftest import image_bytes, wait_for, wait_for_workers
from ..tinymodels import TINY_CLASSES, TINY_SIZE


@pytest.fixture(scope="module")
def tiny_v8(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny8.pt"
    export(
        ExportSpec(
            factory="tests.tinymodels:tiny_cnn",
            out=out,
            name="tiny",
            version="8",
            preprocess=Preprocess(size=TINY_SIZE, resize="stretch"),
            labels=tuple(f"class{i}" for i in range(TINY_CLASSES)),
        )
    )
    return out


def test_a_repeated_photo_is_answered_from_the_cache_without_queueing(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    start_worker("--cache-ttl-s", "600")
    wait_for_workers(conn)
    photo = image_bytes("cat.jpg")
    first = producer.classify(photo, timeout=60, cache=True)
    assert first["ok"] and "cached" not in first and producer.cache.misses == 1
    assert wait_for(lambda: conn.keys(f"{PREFIX}*"), 10)
    queued_before = conn.zcard("rq:finished:classify")
    job_id = producer.enqueue(photo, cache=True, meta={"ad": 1})
    again = producer.result(job_id, timeout=1)
    assert again["cached"] is True and again["label"] == first["label"] and again["meta"] == {"ad": 1}
    assert [s for _, s in again["topk"]] == pytest.approx([s for _, s in first["topk"]])
    assert conn.zcard("rq:finished:classify") == queued_before and conn.llen("rq:queue:classify") == 0
    assert producer.cache.hits == 1
    other = producer.classify(image_bytes("coffee.jpg"), timeout=60, cache=True)
    assert "cached" not in other  # another photo: a miss, classified


def test_a_new_model_version_never_serves_the_old_versions_result(redis_url, conn, start_worker, tiny_v8):
    producer = Producer(redis_url)
    old = start_worker("--cache-ttl-s", "600")
    wait_for_workers(conn)
    photo = image_bytes("coffee.jpg")
    assert producer.classify(photo, timeout=60, cache=True)["model"] == "tiny@7"
    old.terminate()
    old.wait(timeout=30)
    start_worker("--cache-ttl-s", "600", model=tiny_v8)
    assert wait_for(lambda: b"tiny@8" in (conn.get("rq:adclassify:model:classify") or b""), 60)
    answer = producer.classify(photo, timeout=60, cache=True)
    assert answer["model"] == "tiny@8" and "cached" not in answer  # v7's entry is never served


def test_the_cache_off_writes_nothing_and_a_batch_runs_a_repeated_photo_once(redis_url, conn, start_worker):
    producer = Producer(redis_url)
    photo = image_bytes("flower.jpg")
    ids = producer.enqueue_many([photo] * 6 + [image_bytes("cat.jpg")] * 2)
    start_worker("--cache-ttl-s", "0", "--batch-size", "8", "--max-wait-ms", "500")
    results = [producer.result(i, timeout=60) for i in ids]
    assert all(r["ok"] for r in results) and len({r["label"] for r in results[:6]}) == 1
    assert not conn.keys(f"{PREFIX}*")  # (one forward row per distinct photo: tests/unit/test_pipeline.py)


def test_only_jobs_that_ask_are_cached_unless_the_worker_caches_all(redis_url, conn, start_worker):
    from rq.job import Job

    from producer.wire.serializer import MsgpackSerializer

    producer = Producer(redis_url)
    unasked = producer.enqueue_many([image_bytes("flower.jpg")])
    asked = producer.enqueue_many([image_bytes("cat.jpg")], cache=True)  # a backfill filling the cache
    worker = start_worker("--cache-ttl-s", "600")
    assert all(producer.result(i, timeout=60)["ok"] for i in unasked + asked)
    assert Job.fetch(asked[0], connection=conn, serializer=MsgpackSerializer).meta == {"cache": True}  # RQ's API
    assert Job.fetch(unasked[0], connection=conn, serializer=MsgpackSerializer).meta == {}
    assert len(conn.keys(f"{PREFIX}*")) == 1  # the photo nobody asked to cache was never hashed or written
    assert "cached" not in producer.classify(image_bytes("flower.jpg"), timeout=60, cache=True)
    assert producer.classify(image_bytes("cat.jpg"), timeout=60, cache=True)["cached"]
    assert producer.classify(image_bytes("flower.jpg"), timeout=60, cache=True)["cached"]  # the miss asked
    worker.terminate()
    worker.wait(timeout=30)
    start_worker("--cache-ttl-s", "600", "--cache-for", "all")
    assert producer.result(producer.enqueue(image_bytes("coffee.jpg")), timeout=60)["ok"]
    assert producer.classify(image_bytes("coffee.jpg"), timeout=60, cache=True)["cached"]


def test_result_maps_are_unchanged_by_the_cache_fields():
    from producer.wire.cache import cached_result

    result = cached_result("cached-1", {"model": "m@1", "label": "a", "score": 0.9, "topk": [["a", 0.9]]}, None)
    assert dataclasses.is_dataclass(result) is False and result["cached"] and result["ok"] and result["label"] == "a"
