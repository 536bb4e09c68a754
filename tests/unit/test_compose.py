"""docker-compose.yml can't run here (no Docker engine): check that it agrees with the CLI instead.

``worker_settings`` is the check that the compose file and the Kubernetes manifests (test_deploy.py)
share: a worker's command line and environment, read the way ``python -m worker`` reads them."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import yaml

from producer.dashboard import startup_problem
from worker.config import WorkerSettings, add_arguments, settings_from
from worker.flags import FLAGS

from ..conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKER_COMMAND = ["python", "-m", "worker"]
WORKERS = {
    name: s
    for name, s in SERVICES.items()
    if s.get("command", [])[:3] == WORKER_COMMAND and s["command"][3:4] != ["export"]  # not the one-shot export
}
ENV_TWINS = {env for _, env, _, _ in FLAGS} | {"WORKER_BURST", "WORKER_LOG_JSON"}


def worker_settings(command: list[str], environment: Mapping[str, object]) -> WorkerSettings:
    """The settings ``command`` (``python -m worker ...``) would run with in ``environment``: fails on a
    variable that is no flag's environment twin (a typo would be silently ignored by the worker), on a
    flag the CLI does not know, and on a value the worker would refuse at start."""
    assert command[:3] == WORKER_COMMAND, command
    unknown = set(environment) - ENV_TWINS
    assert not unknown, f"not environment twins of worker flags: {sorted(unknown)}"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(command[3:])  # every flag in the command exists
    return settings_from(args, {name: str(value) for name, value in environment.items()})


def test_redis_is_persistent_and_health_checked():
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:7") and "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"]) and "ping" in redis["healthcheck"]["test"]


def test_redis_has_a_memory_cap_that_refuses_rather_than_evicts_jobs():
    command = SERVICES["redis"]["command"]
    assert "--maxmemory" in command
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_every_redis_keeps_a_finished_jobs_result_stream_small():
    # tests/process/test_full_redis.py measures memory with the same setting
    servers = [s for s in SERVICES.values() if s.get("command") and s["command"][0] == "redis-server"]
    assert len(servers) == 3
    for service in servers:
        command = service["command"]
        assert command[command.index("--stream-node-max-bytes") + 1] == "1024"


def seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def test_workers_restart_and_get_longer_to_stop_than_their_shutdown_bound():
    for name, service in WORKERS.items():
        assert service["restart"] in ("unless-stopped", "always", "on-failure"), name
        bound = worker_settings(service["command"], service["environment"]).shutdown_timeout_s
        assert seconds(service["stop_grace_period"]) > bound, name


def test_workers_are_configured_by_environment_the_cli_knows():
    assert {"worker-gpu0", "worker-gpu1", "workers-all-gpus"} <= set(WORKERS)
    for name, service in WORKERS.items():
        settings = worker_settings(service["command"], service["environment"])
        assert settings.model.startswith("/models/"), name
        assert "./models:/models:ro" in service["volumes"]
        if settings.redis_url.startswith("redis+sentinel://"):  # the ha profile: Redis under Sentinel
            assert {"sentinel-1", "sentinel-2", "sentinel-3"} <= set(service["depends_on"]), name
        else:
            assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_one_service_per_gpu_and_one_container_for_all():
    ids = [WORKERS[f"worker-gpu{k}"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for k in (0, 1)]
    assert ids == [["0"], ["1"]]
    every = WORKERS["workers-all-gpus"]
    assert every["command"][3:] == ["--devices", "all"] and "all-gpus" in every["profiles"]
    assert every["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"


def test_demo_producer_pushes_the_sample_images():
    producer = SERVICES["producer"]
    assert producer["command"][:4] == ["python", "-m", "producer", "push"] and "demo" in producer["profiles"]
    assert producer["environment"]["REDIS_URL"] == WORKERS["worker-gpu0"]["environment"]["REDIS_URL"]


def test_dashboard_service_serves_our_launcher_on_this_host_only():
    dashboard = SERVICES["dashboard"]
    assert dashboard["command"][:4] == ["python", "-m", "producer", "dashboard"]
    assert "dashboard" in dashboard["profiles"]
    assert dashboard["environment"]["REDIS_URL"] == WORKERS["worker-gpu0"]["environment"]["REDIS_URL"]
    port = dashboard["command"][dashboard["command"].index("--port") + 1]
    assert dashboard["ports"] == [f"127.0.0.1:{port}:{port}"] and "--bind" in dashboard["command"]
    # from the environment, not required by compose (a `:?` stopped every compose command without it: compose
    # resolves every service's variables first); the dashboard itself refuses to start beyond loopback without it
    assert dashboard["environment"]["DASHBOARD_PASSWORD"] == "${DASHBOARD_PASSWORD:-}"
    bind = dashboard["command"][dashboard["command"].index("--bind") + 1]
    assert startup_problem(bind, None, "") is not None and startup_problem(bind, None, "s3cret") is None
    assert "dashboard" in (ROOT / "Dockerfile").read_text()  # the image has the dashboard extra


def test_the_image_runs_as_the_unprivileged_uid_the_kubernetes_deployment_uses():
    import yaml as _yaml

    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    deployment = _yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "deployment.yaml").read_text())
    uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert users and users[-1].split(":")[0] == str(uid) != "0"


def test_the_model_file_is_built_once_before_any_worker_starts():
    model = SERVICES["model"]
    assert model["command"][:4] == ["python", "-m", "worker", "export"] and "--if-missing" in model["command"]
    out = model["command"][model["command"].index("--out") + 1]
    assert model["volumes"] == ["./models:/models"] and out.startswith("/models/")  # written here, read-only there
    for name, worker in WORKERS.items():
        assert worker["depends_on"]["model"] == {"condition": "service_completed_successfully"}, name
        assert worker["environment"]["WORKER_MODEL"] == out and "./models:/models:ro" in worker["volumes"], name
