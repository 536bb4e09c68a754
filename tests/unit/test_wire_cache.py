"""The result cache's key: everything that can change a result's numbers is in it."""

from __future__ import annotations

import pytest

from producer.wire.cache import announcement, digest, key_for, parse_announcement
from producer.wire.keys import CACHE_PREFIX

BASE = {"tag": "tiny@1", "precision": "fp32", "decode": "cpu", "topk": 5, "ttl_s": 60}


@pytest.mark.parametrize(
    ("field", "other"),
    [("tag", "tiny@2"), ("precision", "fp16"), ("precision", "bf16"), ("decode", "gpu"), ("topk", 3)],
)
def test_a_photo_has_another_key_when_anything_that_changes_its_numbers_changes(field, other):
    photo = digest(b"the same photo bytes")
    assert key_for(photo, {**BASE, field: other}) != key_for(photo, BASE)


def test_the_key_is_the_photos_digest_under_the_cache_prefix_and_ignores_the_ttl():
    photo = digest(b"jpeg")
    key = key_for(photo, BASE)
    assert key.startswith(CACHE_PREFIX) and key.endswith(photo)
    assert key_for(photo, {**BASE, "ttl_s": 1}) == key
    assert key_for(digest(b"another photo"), BASE) != key


def test_an_announcement_round_trips_and_a_cache_that_is_off_or_foreign_reads_as_none():
    raw = announcement("tiny@1", "fp16", "gpu", 5, 60)
    assert parse_announcement(raw) == {
        "tag": "tiny@1",
        "precision": "fp16",
        "decode": "gpu",
        "topk": 5,
        "ttl_s": 60,
        "since": 0.0,
    }
    assert parse_announcement(announcement("tiny@1", "fp16", "gpu", 5, 0)) is None
    assert parse_announcement(b"\xc1 not msgpack") is None
    assert parse_announcement(b"") is None


def test_hits_never_asked_for_are_bounded_oldest_first():
    from producer.cache import ProducerCache

    cache = ProducerCache(max_answers=3)
    for n in range(5):
        cache.keep({"job_id": f"cached-{n}", "ok": True})
    assert list(cache.answers) == ["cached-2", "cached-3", "cached-4"] and cache.dropped == 2


def test_only_rq_meta_that_asks_in_msgpack_asks_for_the_cache():
    import pickle

    from producer.wire.cache import ASKED, asked
    from producer.wire.serializer import dumps

    assert asked(dumps(ASKED))
    assert asked(dumps({**ASKED, "other": 1}))  # RQ meta others put beside it
    for other in (None, b"", dumps({}), dumps({"cache": 1}), dumps({"cache": "yes"}), dumps([True]), b"\xc1"):
        assert not asked(other)
    assert not asked(pickle.dumps({"cache": True}))  # RQ's default serializer's meta: never unpickled, a no
    assert not asked(dumps({**ASKED, "notes": "x" * 5000}))  # a foreign tool's large meta is not parsed


def test_a_started_jobs_record_says_whether_its_producer_asked_for_the_cache():
    from producer.wire.cache import ASKED
    from producer.wire.serializer import dumps
    from worker.store.rqdata import read_record

    call = dumps(["worker.tasks.classify", None, [], {"image": b"x", "meta": {}}])
    fields = {b"data": call, b"meta": dumps(ASKED)}
    assert read_record("j", "e", fields, 0.0, 0.0, 1 << 20).cache_asked
    assert not read_record("j", "e", {b"data": call}, 0.0, 0.0, 1 << 20).cache_asked  # an older producer's job
    broken = read_record("j", "e", {b"data": call, b"meta": b"\x93garbage"}, 0.0, 0.0, 1 << 20)
    assert not broken.cache_asked and broken.read_error is None  # bad RQ meta: not asked, the job still runs
