"""The compose file's ha profile: Redis under Sentinel, and workers and producers that follow a failover."""

from __future__ import annotations

import yaml

from producer.wire.urls import parse_sentinel

from ..conftest import ROOT

SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
HA = {name: s for name, s in SERVICES.items() if "ha" in s.get("profiles", [])}


def test_the_ha_profile_runs_a_primary_a_replica_and_three_sentinels_with_a_quorum_of_two():
    replica = HA["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1] == "redis-primary"
    sentinels = [s for name, s in HA.items() if name.startswith("sentinel-")]
    assert len(sentinels) == 3
    for sentinel in sentinels:
        script = sentinel["entrypoint"][-1]
        assert "sentinel monitor adclassify redis-primary 6379 2" in script and "--sentinel" in script


def test_workers_and_producers_use_the_sentinel_url_and_the_producer_waits_for_a_replica():
    for name in ("worker-ha", "producer-ha"):
        spec = parse_sentinel(HA[name]["environment"]["REDIS_URL"])
        assert spec.service == "adclassify" and {h for h, _ in spec.sentinels} == {
            "sentinel-1",
            "sentinel-2",
            "sentinel-3",
        }
    push = HA["producer-ha"]["command"]
    assert push[push.index("--wait-replicas") + 1] == "1"
