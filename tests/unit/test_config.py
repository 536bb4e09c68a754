"""Settings that must not leak or collide: masked passwords, one name per launched child."""

from __future__ import annotations

from worker.config import WorkerSettings, mask_url
from worker.launcher import Launcher


def test_passwords_are_masked_in_the_netloc_and_in_the_query_string():
    assert mask_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    masked = mask_url("rediss://host:6380/0?ssl_cert_reqs=required&password=s3cret&db=1")
    assert "s3cret" not in masked and "password=***" in masked and "ssl_cert_reqs=required" in masked
    assert "s3cret" not in WorkerSettings(model="m", redis_url="redis://h/0?password=s3cret").public()["redis_url"]


def test_children_of_a_named_launcher_get_distinct_names():
    launcher = Launcher(WorkerSettings(model="m", name="gpu-box"), ["cpu", "cpu"])
    assert [s["name"] for s in launcher.settings] == ["gpu-box:0", "gpu-box:1"]
    unnamed = Launcher(WorkerSettings(model="m"), ["cpu", "cpu"])
    assert [s["name"] for s in unnamed.settings] == ["", ""]  # host:device:pid, distinct per process


def test_a_worker_serving_priorities_holds_fewer_batches_so_high_jobs_wait_behind_at_most_one():
    from worker.progress import pipeline_settings_for

    one = pipeline_settings_for(WorkerSettings(model="m", queue="classify"))
    two = pipeline_settings_for(WorkerSettings(model="m", queue="high,default"))
    assert one.batches_in_hand == 3 and two.batches_in_hand == 2
    assert not pipeline_settings_for(WorkerSettings(model="m", cache_ttl_s=0)).hash_images


def test_cache_for_is_asked_by_default_and_takes_all_or_refuses_other_words():
    import argparse

    import pytest

    from worker.config import add_arguments, settings_from
    from worker.progress import pipeline_settings_for

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    default = settings_from(parser.parse_args(["--model", "m"]), {})
    assert default.cache_for == "asked" and not pipeline_settings_for(default).cache_all
    env = settings_from(parser.parse_args(["--model", "m"]), {"WORKER_CACHE_FOR": "all"})
    assert pipeline_settings_for(env).cache_all
    with pytest.raises(SystemExit, match="--cache-for must be asked or all"):
        settings_from(parser.parse_args(["--model", "m", "--cache-for", "some"]), {})
    with pytest.raises(SystemExit, match="--precision must be auto, fp32, fp16 or bf16"):
        settings_from(parser.parse_args(["--model", "m", "--precision", "fp8"]), {})
