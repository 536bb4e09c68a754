"""Shard choice: rendezvous hashing of the job id over the shards' names (pure logic, no Redis)."""

from __future__ import annotations

from collections import Counter

from producer.shards import rendezvous, shard_name, split_urls

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
