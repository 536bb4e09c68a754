"""Redis URLs: plain and Sentinel, what they mean, their shard names, and their masks."""

from __future__ import annotations

import pytest

from producer.wire.urls import RedisURLError, check, mask, parse_sentinel, shard_name


def test_a_sentinel_url_names_its_sentinels_service_database_and_credentials():
    spec = parse_sentinel("redis+sentinel://app:s3cret@10.0.0.1:26379,10.0.0.2:26380,sentinel-c/mymaster/2")
    assert spec.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379))
    assert (spec.service, spec.db, spec.username, spec.password, spec.tls) == ("mymaster", 2, "app", "s3cret", False)


def test_tls_and_the_sentinels_own_credentials_come_from_the_scheme_and_the_query():
    spec = parse_sentinel("rediss+sentinel://h:1/svc?sentinel_username=s&sentinel_password=pw")
    assert spec.tls and spec.sentinel_tls and (spec.sentinel_username, spec.sentinel_password) == ("s", "pw")
    assert spec.db == 0 and spec.username is None
    assert not parse_sentinel("rediss+sentinel://h:1/svc?sentinel_ssl=0").sentinel_tls


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://h:1", "redis+sentinel:///svc", "redis+sentinel://h:x/svc", "redis+sentinel://h:1/svc/db"],
)
def test_a_sentinel_url_without_hosts_service_or_numbers_is_refused_in_one_line(url):
    with pytest.raises(RedisURLError) as refused:
        check(url)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "redis-sentinel://h/s"])
def test_other_schemes_are_refused_with_what_would_work(url):
    with pytest.raises(RedisURLError, match="redis://, rediss://, unix://, redis\\+sentinel://"):
        check(url)


def test_shard_names_are_stable_across_credentials_and_failovers():
    assert shard_name("redis://:old@h:6380/1") == shard_name("redis://:new@h:6380/1") == "h:6380/1"
    assert shard_name("redis://h") == "h:6379/0"
    one = shard_name("redis+sentinel://u:p@a:1,b:2/orders/3")
    assert one == shard_name("redis+sentinel://c:9/orders/3") == "sentinel:orders/3"  # sentinels may change


def test_masks_hide_every_password():
    assert (
        mask("redis+sentinel://u:pw@a:1,b:2/s/0?sentinel_password=x")
        == "redis+sentinel://u:***@a:1,b:2/s/0?sentinel_password=***"
    )
    assert mask("rediss://:pw@h:6380/0") == "rediss://:***@h:6380/0"
    assert mask("redis://h:6379/0") == "redis://h:6379/0"
