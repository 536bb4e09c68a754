"""Shard choice: rendezvous hashing of the job id over the shards' names (pure logic, no Redis)."""

from __future__ import annotations

from collections import Counter

import pytest

from producer.shards import open_shards, rendezvous, shard_name, shard_urls, split_urls

NAMES = [shard_name(u) for u in split_urls("redis://a:6379/0, redis://:secret@b:6380/0,redis://c/1")]


def test_names_leave_credentials_and_options_out():
    assert NAMES == ["a:6379/0", "b:6380/0", "c:6379/1"]
    assert shard_name("rediss://user:pw@b:6380/0?ssl_cert_reqs=required") == "b:6380/0"


def test_ids_spread_evenly_and_always_land_on_the_same_shard():
    counts = Counter(rendezvous(NAMES, f"job-{i}") for i in range(30_000))
    assert all(abs(n - 10_000) < 400 for n in counts.values()), counts
    assert all(rendezvous(NAMES, f"ad-{i}") == rendezvous(list(NAMES), f"ad-{i}") for i in range(1000))


def test_adding_a_shard_moves_only_the_ids_it_takes():
    ids = [f"job-{i}" for i in range(20_000)]
    before = {i: NAMES[rendezvous(NAMES, i)] for i in ids}
    grown = [*NAMES, "d:6379/0"]
    after = {i: grown[rendezvous(grown, i)] for i in ids}
    moved = [i for i in ids if before[i] != after[i]]
    assert all(after[i] == "d:6379/0" for i in moved)  # nothing moves between the old shards
    assert 0.22 < len(moved) / len(ids) < 0.28  # about 1/(N+1)


def test_shards_come_from_a_comma_list_or_a_list_and_one_server_is_listed_once():
    assert (
        shard_urls("redis://a/0, redis://b/0")
        == shard_urls(["redis://a/0", "redis://b/0"])
        == [
            "redis://a/0",
            "redis://b/0",
        ]
    )
    assert shard_urls(["redis://a/0,redis://b/0", "redis://c/0"]) == ["redis://a/0", "redis://b/0", "redis://c/0"]
    with pytest.raises(ValueError, match="more than once"):
        shard_urls("redis://a:6379/0,redis://:pw@a/0")  # the same server, whatever the credentials
    with pytest.raises(ValueError):
        shard_urls(" , ")


def test_each_shard_gets_its_own_client_and_an_explicit_client_is_one_shard():
    shards = open_shards("redis://a/0,redis://b/1", None, lambda url: f"client of {url}")
    assert [(s.name, s.connection) for s in shards] == [
        ("a:6379/0", "client of redis://a/0"),
        ("b:6379/1", "client of redis://b/1"),
    ]
    (only,) = open_shards("redis://a/0", "ready-made", lambda url: pytest.fail("not called"))
    assert only.connection == "ready-made" and only.name == "a:6379/0"
    with pytest.raises(ValueError, match="one shard"):
        open_shards("redis://a/0,redis://b/0", "ready-made", lambda url: url)
