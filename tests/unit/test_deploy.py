"""deploy/ can't meet a cluster here: render the kustomizations and check what they would apply instead.

Each variant (the base, the Sentinel and the shards overlays) is rendered with ``kustomize build`` (or
``kubectl kustomize``); its core objects are validated offline against the Kubernetes schemas
(``kubernetes-validate``), its KEDA objects against the fields KEDA documents, and the worker's command
and environment against the CLI by the check the compose file uses (``test_compose.worker_settings``).
The Secret is not in the kustomizations (applying them must never overwrite real credentials): each
variant's ``secret.example.yaml`` stands for it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from worker.config import WorkerSettings

from ..conftest import ROOT
from .test_compose import worker_settings

K8S = ROOT / "deploy" / "k8s"
VARIANTS = {"base": K8S / "base", "sentinel": K8S / "overlays" / "sentinel", "shards": K8S / "overlays" / "shards"}
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# The oldest Kubernetes docs/kubernetes.md asks for, and the newest the installed kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29", "latest")


def fields(names: str) -> frozenset[str]:
    return frozenset(names.split())


# KEDA's documented fields (keda.sh/docs/2.20: reference/scaledobject-spec, concepts/authentication,
# scalers/redis-lists, scalers/redis-sentinel-lists). A field outside these is a typo KEDA would ignore
# or refuse, found here rather than in a cluster.
SCALEDOBJECT_SPEC = fields(
    "scaleTargetRef pollingInterval cooldownPeriod initialCooldownPeriod idleReplicaCount minReplicaCount "
    "maxReplicaCount fallback advanced triggers"
)
SCALE_TARGET_REF = fields("apiVersion kind name envSourceContainerName")
ADVANCED = fields("restoreToOriginalReplicaCount horizontalPodAutoscalerConfig scalingModifiers")
SCALING_MODIFIERS = fields("target activationTarget metricType formula")
TRIGGER = fields("type metadata name useCachedMetrics authenticationRef metricType")
AUTHENTICATION_REF = fields("name kind")
TRIGGER_AUTHENTICATION_SPEC = fields(
    "podIdentity secretTargetRef env configMapTargetRef hashiCorpVault azureKeyVault awsSecretManager "
    "gcpSecretManager boundServiceAccountToken"
)
SECRET_TARGET_REF = fields("parameter name key")
REDIS_METADATA = fields(
    "address host port addressFromEnv hostFromEnv portFromEnv usernameFromEnv passwordFromEnv listName "
    "listLength activationListLength enableTLS unsafeSsl databaseIndex"
)
REDIS_AUTH = fields("address host port username password tls ca cert key keyPassword")
SENTINEL_METADATA = fields(
    "addresses hosts ports addressesFromEnv hostsFromEnv portsFromEnv usernameFromEnv passwordFromEnv "
    "sentinelUsernameFromEnv sentinelPasswordFromEnv sentinelMaster sentinelMasterFromEnv listName listLength "
    "activationListLength enableTLS unsafeSsl databaseIndex"
)
SENTINEL_AUTH = fields(
    "addresses hosts ports sentinelMaster username password sentinelUsername sentinelPassword tls ca cert key "
    "keyPassword"
)
SCALERS = {"redis": (REDIS_METADATA, REDIS_AUTH), "redis-sentinel": (SENTINEL_METADATA, SENTINEL_AUTH)}
REQUIRED_METADATA = {"listName", "listLength"}


def kustomize_command() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.skip("neither kustomize nor kubectl is on PATH: install kubectl (`kubectl kustomize`) to render deploy/k8s")


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build directory`` would apply."""
    done = subprocess.run([*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


class Variant:
    """One rendered kustomization, its objects by kind, and its example Secret."""

    def __init__(self, name: str) -> None:
        self.name, self.directory = name, VARIANTS[name]
        self.objects = render(self.directory)
        self.secret = yaml.safe_load((self.directory / "secret.example.yaml").read_text())

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        (found,) = self.all(kind)
        return found

    @property
    def pod(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        (worker,) = [c for c in self.pod["containers"] if c["name"] == "worker"]
        return worker

    def environment(self) -> dict[str, str]:
        """The worker container's environment as the pod would see it: its ConfigMaps, then its ``env``
        (a Secret's value from the example Secret, a resource field from the container's requests)."""
        env: dict[str, str] = {}
        configmaps = {c["metadata"]["name"]: c["data"] for c in self.all("ConfigMap")}
        for source in self.container.get("envFrom", []):
            env.update(configmaps[source["configMapRef"]["name"]])
        for var in self.container.get("env", []):
            env[var["name"]] = var["value"] if "value" in var else self.resolve(var["valueFrom"])
        return env

    def resolve(self, value_from: dict[str, Any]) -> str:
        if "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            assert ref["name"] == self.secret["metadata"]["name"]
            return self.secret["stringData"][ref["key"]]
        ref = value_from["resourceFieldRef"]
        assert ref["containerName"] == self.container["name"] and ref.get("divisor", "1") == "1"
        kind, resource = ref["resource"].split(".")
        return str(math.ceil(cpu_cores(self.container["resources"][kind][resource])))

    def settings(self) -> WorkerSettings:
        return worker_settings(self.container["command"] + self.container.get("args", []), self.environment())


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> Variant:
    return Variant(request.param)


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Schemas must come from the installed package, never from the network."""

    def refuse(*args: object) -> None:
        raise AssertionError("schema validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_variants_render_the_core_objects_and_the_keda_scaler(variant):
    kinds = [o["kind"] for o in variant.objects]
    assert set(kinds) == CORE_KINDS | KEDA_KINDS, kinds
    assert "Secret" not in kinds  # applying a variant never overwrites the real credentials
    assert variant.secret["kind"] == "Secret"


def test_core_objects_and_the_example_secret_match_the_kubernetes_schemas(variant, no_network):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    latest = kubernetes_validate.utils.latest_version()
    core = [o for o in variant.objects if o["kind"] in CORE_KINDS] + [variant.secret]
    for version in KUBERNETES_VERSIONS:
        for obj in core:  # strict: a field the schema does not know (a typo) fails too
            kubernetes_validate.validate(obj, latest if version == "latest" else version, strict=True)


def test_worker_command_and_environment_are_ones_the_cli_knows(variant):
    settings = variant.settings()
    assert settings.device == "cuda" and not settings.devices and settings.workers_per_device == 1
    assert settings.cpus == math.ceil(cpu_cores(variant.container["resources"]["requests"]["cpu"]))
    assert settings.redis_url == variant.secret["stringData"]["REDIS_URL"]


def test_one_gpu_per_pod(variant):
    resources = variant.container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"].get("nvidia.com/gpu", "1") == "1"
    assert "replicas" not in variant.one("Deployment")["spec"]  # KEDA owns the count


def test_model_comes_from_a_read_only_volume(variant):
    model = Path(variant.settings().model)
    mounts = {m["mountPath"]: m for m in variant.container["volumeMounts"]}
    mount = mounts[str(model.parent)]
    assert mount.get("readOnly") is True  # a model file is code (docs/security.md)
    (volume,) = [v for v in variant.pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["readOnly"] is True


def test_grace_period_is_above_the_shutdown_timeout(variant):
    assert variant.pod["terminationGracePeriodSeconds"] > variant.settings().shutdown_timeout_s


def test_probes_ask_the_health_port_for_healthz_and_readyz(variant):
    settings, container = variant.settings(), variant.container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    paths = {kind: probe["path"] for kind, probe in probes.items()}
    assert paths == {"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"}
    assert {ports[probe["port"]] for probe in probes.values()} == {settings.health_port}
    assert ports["metrics"] == settings.metrics_port
    # one port for both: with several children per pod the launcher answers the probes there, for all of them
    assert settings.health_port == settings.metrics_port


def test_metrics_service_and_disruption_budget_select_the_worker_pods(variant):
    labels = variant.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service, budget = variant.one("Service"), variant.one("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # half at a time, not one: an evicted worker's replacement is Pending on a full GPU pool, and the budget
    # counts it unavailable (with 1, a drain's second eviction waited for a free GPU for ever)
    assert budget["spec"]["maxUnavailable"] == "50%"
    annotations = service["metadata"]["annotations"]
    (port,) = service["spec"]["ports"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == port["port"] == variant.settings().metrics_port
    assert port["targetPort"] == "metrics"


def test_image_is_pinned(variant):
    image = variant.container["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


def test_scaled_object_and_trigger_authentication_use_keda_documented_fields_only(variant):
    scaled, auth = variant.one("ScaledObject"), variant.one("TriggerAuthentication")
    spec = scaled["spec"]
    assert scaled["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    assert set(spec) <= SCALEDOBJECT_SPEC and set(spec["scaleTargetRef"]) <= SCALE_TARGET_REF
    assert set(spec.get("advanced", {})) <= ADVANCED
    assert set(spec.get("advanced", {}).get("scalingModifiers", {})) <= SCALING_MODIFIERS
    assert set(auth["spec"]) <= TRIGGER_AUTHENTICATION_SPEC
    auth_parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
    for ref in auth["spec"]["secretTargetRef"]:
        assert set(ref) == SECRET_TARGET_REF
    for trigger in spec["triggers"]:
        metadata_fields, auth_fields = SCALERS[trigger["type"]]
        assert set(trigger) <= TRIGGER and set(trigger["authenticationRef"]) <= AUTHENTICATION_REF
        assert set(trigger["metadata"]) <= metadata_fields, trigger["metadata"]
        assert set(trigger["metadata"]) >= REQUIRED_METADATA
        assert all(isinstance(v, str) for v in trigger["metadata"].values())  # a map of strings in KEDA's CRD
        if trigger["authenticationRef"]["name"] == auth["metadata"]["name"]:
            assert auth_parameters <= auth_fields


def test_keda_reads_its_own_credentials_from_the_workers_secret(variant):
    auth = variant.one("TriggerAuthentication")
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password"}  # the scaler's ACL user, not the worker's
    for ref in refs.values():
        assert ref["name"] == variant.secret["metadata"]["name"] and ref["key"] in variant.secret["stringData"]
    assert {t["authenticationRef"]["name"] for t in variant.one("ScaledObject")["spec"]["triggers"]} == {
        auth["metadata"]["name"]
    }


def test_scaled_object_scales_the_worker_deployment_to_zero_when_idle(variant):
    spec = variant.one("ScaledObject")["spec"]
    assert spec["scaleTargetRef"]["name"] == variant.one("Deployment")["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
    for trigger in spec["triggers"]:
        assert int(trigger["metadata"]["activationListLength"]) == 0  # any queued job wakes a pod
        assert int(trigger["metadata"]["listLength"]) > 0


def shard_urls(redis_url: str) -> list[str]:
    """REDIS_URL's servers: a comma list of URLs, where a Sentinel URL's own commas separate its Sentinels
    (``redis+sentinel://a:26379,b:26379/service/0``): a piece without a scheme continues the one before."""
    urls: list[str] = []
    for piece in (p.strip() for p in redis_url.split(",")):
        if "://" in piece or not urls:
            urls.append(piece)
        else:
            urls[-1] += "," + piece
    return urls


def redis_location(url: str) -> dict[str, str]:
    """What a KEDA trigger must say to read the queues of the Redis that ``url`` names."""
    scheme, _, rest = url.partition("://")
    if scheme.endswith("+sentinel"):  # redis+sentinel://[user:pw@]host:port[,host:port...]/service[/db]
        netloc, _, path = rest.partition("/")
        service, _, db = path.partition("/")
        hosts = netloc.rpartition("@")[2]
        return {"type": "redis-sentinel", "addresses": hosts, "sentinelMaster": service, "databaseIndex": db or "0"}
    parts = urlsplit(url)
    address = f"{parts.hostname}:{parts.port or 6379}"
    return {"type": "redis", "address": address, "databaseIndex": parts.path[1:] or "0"}


def trigger_location(trigger: dict[str, Any]) -> dict[str, str]:
    metadata = trigger["metadata"]
    keys = ("addresses", "sentinelMaster") if trigger["type"] == "redis-sentinel" else ("address",)
    found = {key: metadata[key].replace(" ", "") for key in keys}
    return {"type": trigger["type"], "databaseIndex": metadata.get("databaseIndex", "0"), **found}


def test_one_trigger_per_queue_and_per_shard(variant):
    """Each trigger reads one queue's RQ list, or its jobs in flight (the started registry, the ids a take
    moved: they keep a pod up while jobs run and bring one back for a dead worker's), on one of the servers
    the workers serve, and every (server, queue) pair has them: a queue or shard added on one side fails here."""
    settings = variant.settings()
    queues = [q.strip() for q in settings.queue.split(",")]
    wanted = sorted(
        json.dumps({**redis_location(url), "listName": key}, sort_keys=True)
        for url in shard_urls(settings.redis_url)
        for queue in queues
        for key in (f"rq:queue:{queue}", f"rq:wip:{queue}", f"rq:queue:{queue}:intermediate")
    )
    triggers = variant.one("ScaledObject")["spec"]["triggers"]
    found = sorted(
        json.dumps({**trigger_location(t), "listName": t["metadata"]["listName"]}, sort_keys=True) for t in triggers
    )
    assert found == wanted


def test_several_triggers_scale_on_their_sum(variant):
    """The autoscaler takes the largest of several metrics; every pod serves every queue and shard, so a
    ScaledObject with several triggers adds their backlogs up (scalingModifiers) against one target."""
    spec = variant.one("ScaledObject")["spec"]
    names = [t["name"] for t in spec["triggers"]]
    assert len(set(names)) == len(names)
    if len(names) == 1:
        assert "scalingModifiers" not in spec.get("advanced", {})
        return
    modifiers = spec["advanced"]["scalingModifiers"]
    assert sorted(term.strip() for term in modifiers["formula"].split("+")) == sorted(names)
    assert modifiers.get("metricType", "AverageValue") == "AverageValue"
    assert {modifiers["target"]} == {t["metadata"]["listLength"] for t in spec["triggers"]}
    assert modifiers.get("activationTarget", "0") == "0"


def test_optional_service_monitor_scrapes_the_metrics_service(tmp_path):
    """The ServiceMonitor component renders on top of the base and selects the metrics Service's port."""
    base = os.path.relpath(K8S / "base", tmp_path)
    component = os.path.relpath(K8S / "components" / "servicemonitor", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [base], "components": [component]}))
    objects = render(tmp_path)
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    assert monitor["spec"]["endpoints"][0]["path"] == service["metadata"]["annotations"]["prometheus.io/path"]


DASHBOARD = ROOT / "deploy" / "grafana" / "adclassify.json"


def test_grafana_dashboard_panels_are_laid_out_and_use_the_datasource_variable():
    """A dashboard Grafana imports as it is: any Prometheus picked at import, panels that do not overlap.
    (tests/process/test_grafana_metrics.py checks every query against a real worker's /metrics.)"""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) and dashboard["uid"]
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        mine = {(box["x"] + dx, box["y"] + dy) for dx in range(box["w"]) for dy in range(box["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["description"] and panel["datasource"] == source, panel["title"]
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
        assert all(t["datasource"] == source and t["expr"].strip() for t in targets), panel["title"]
