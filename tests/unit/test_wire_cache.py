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
    assert parse_announcement(raw) == {"tag": "tiny@1", "precision": "fp16", "decode": "gpu", "topk": 5, "ttl_s": 60}
    assert parse_announcement(announcement("tiny@1", "fp16", "gpu", 5, 0)) is None
    assert parse_announcement(b"\xc1 not msgpack") is None
    assert parse_announcement(b"") is None


def test_hits_never_asked_for_are_bounded_oldest_first():
    from producer.cache import ProducerCache

    cache = ProducerCache(max_answers=3)
    for n in range(5):
        cache.keep({"job_id": f"cached-{n}", "ok": True})
    assert list(cache.answers) == ["cached-2", "cached-3", "cached-4"] and cache.dropped == 2
