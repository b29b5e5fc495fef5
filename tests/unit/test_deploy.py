"""The deployment files agree with the server and with Kubernetes.

The Kubernetes manifests are a Kustomize base and two overlays (cpu, gpu); the tests read what
``kubectl kustomize deploy/k8s/overlays/<variant>`` renders, the documents a cluster would get.

Every HAMLET_* setting they use exists and the settings start a server (a ServerConfig built from the image's ENV
plus the manifest's env); every Kubernetes document validates against the Kubernetes JSON schemas (strict: an
unknown or misspelt field fails) of the oldest version the manifests support and of the newest the validator ships,
offline; probes, grace and drain agree with the server's flags; the Services, the PodDisruptionBudget and the
HorizontalPodAutoscaler select or target the Deployment's pods; the GPU variant differs from the CPU one only where
it must; compose stays consistent with both.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hamlet_server.config import ENV_PREFIX, ServerConfig, config_from_args, is_loopback
from hamlet_server.server import LIVENESS_NAME

pytestmark = pytest.mark.slow  # renders the overlays with kubectl (a process; well under a second each)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTINGS = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(ServerConfig)}
OVERLAYS = DEPLOY / "k8s" / "overlays"
CPU = OVERLAYS / "cpu"
GPU = OVERLAYS / "gpu"
VARIANTS = [CPU, GPU]
OLDEST_KUBERNETES = "1.27"  # native gRPC probes are GA from 1.27
HEADLESS = "hamlet-serve-headless"


# ----------------------------------------------------------------------------------------------- reading the files


_RENDERED: dict[Path, str] = {}


def _render(overlay: Path) -> str:
    """What ``kubectl kustomize OVERLAY`` prints (once per overlay per run)."""
    if overlay not in _RENDERED:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            pytest.skip("kubectl (with its built-in kustomize) is not installed: the overlays cannot be rendered")
        done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"kubectl kustomize {overlay}: {done.stderr}"
        _RENDERED[overlay] = done.stdout
    return _RENDERED[overlay]


def _docs(overlay: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(_render(overlay)) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _services(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ClusterIP Service, the headless Service)."""
    services = [d for d in docs if d["kind"] == "Service"]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    balanced = [s for s in services if s["spec"].get("clusterIP") != "None"]
    assert len(headless) == 1 and len(balanced) == 1, "expected one ClusterIP and one headless Service"
    return balanced[0], headless[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the server runs alone in its pod"
    return containers[0]  # type: ignore[no-any-return]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def _image_env() -> dict[str, str]:
    """The HAMLET_* variables the Dockerfile's ENV lines set."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in line[4:].split()))
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}


def _config(deployment: dict[str, Any]) -> ServerConfig:
    """The settings the pod's server starts with: the image's ENV, then the manifest's env (raises if refused)."""
    return config_from_args(None, environ={**_image_env(), **_env(_container(deployment))})


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["hamlet-serve"]  # type: ignore[no-any-return]


def _seconds(duration: str) -> float:
    """A compose duration such as ``15s`` or ``1m30s``, in seconds."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    if not duration or parts is None:
        raise ValueError(f"expected a duration such as 15s or 1m30s, got {duration!r}")
    return 60 * float(parts.group(1) or 0) + float(parts.group(2) or 0)


def _pre_stop_seconds(container: dict[str, Any]) -> float:
    """How long the preStop hook holds the pod before SIGTERM (0 without one)."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    command = hook["exec"]["command"]
    if command[0] != "sleep" or len(command) != 2:
        raise ValueError(f"expected a preStop of [sleep, N], got {command}")
    return float(command[1])


@pytest.fixture(params=[CPU, GPU], ids=["cpu", "gpu"])
def manifest(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The documents of one variant."""
    return _docs(request.param)


# ----------------------------------------------------------------------------------------------- schemas


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a network connection fails the test: the schemas must come from the package."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"schema validation tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


def test_the_manifests_are_a_base_and_the_two_variant_overlays() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir()) == ["cpu", "gpu"]
    for overlay in VARIANTS:
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        assert kustomization["resources"] == ["../../base"]


def test_the_image_is_named_once_per_variant_qualified_and_tagged() -> None:
    """The base says only ``hamlet-serve``; each overlay's ``images:`` gives the registry and the tag, so the
    rendered image would pull (an unqualified ``hamlet-serve:latest`` would not)."""
    assert "image: hamlet-serve " in (DEPLOY / "k8s" / "base" / "deployment.yaml").read_text()
    for overlay, tag in ((CPU, "cpu"), (GPU, "cuda")):
        [image] = yaml.safe_load((overlay / "kustomization.yaml").read_text())["images"]
        assert image["name"] == "hamlet-serve" and image["newTag"].endswith(tag)
        rendered = _container(_one(_docs(overlay), "Deployment"))["image"]
        registry = rendered.partition("/")[0]
        assert "." in registry or ":" in registry, f"{rendered}: not qualified with a registry host"
        assert rendered == f"{image['newName']}:{image['newTag']}" and not rendered.endswith(":latest")


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", VARIANTS, ids=[p.name for p in VARIANTS])
def test_every_document_validates_against_the_kubernetes_schemas(path: Path, version: str, offline: None) -> None:
    docs = _docs(path)
    assert sorted(d["kind"] for d in docs) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "Service",
    ]
    for doc in docs:  # an unknown kind raises SchemaNotFoundError
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}", pytrace=False)


def test_the_validator_refuses_a_misspelt_field_and_a_wrong_type(offline: None) -> None:
    deployment = _one(_docs(CPU), "Deployment")
    misspelt = copy.deepcopy(deployment)
    pod = misspelt["spec"]["template"]["spec"]
    pod["terminationGracePeriod"] = pod.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriod"):
        kubernetes_validate.validate(misspelt, OLDEST_KUBERNETES, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "3"
    with pytest.raises(kubernetes_validate.ValidationError, match="not of type"):
        kubernetes_validate.validate(wrong_type, OLDEST_KUBERNETES, strict=True)


# ----------------------------------------------------------------------------------------------- the server's flags


def test_every_hamlet_variable_in_deploy_files_is_a_server_setting() -> None:
    used = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            used |= set(re.findall(r"\bHAMLET_[A-Z_]+\b", path.read_text()))
    assert used, "the deploy files set no HAMLET_* variable at all"
    assert used <= SETTINGS, f"unknown settings: {sorted(used - SETTINGS)}"


def test_probes_ask_the_servers_health_names_on_its_port(manifest: list[dict[str, Any]]) -> None:
    deployment = _one(manifest, "Deployment")
    container = _container(deployment)
    config = _config(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    readiness, liveness, startup = (container[k]["grpc"] for k in ("readinessProbe", "livenessProbe", "startupProbe"))
    assert readiness["port"] == liveness["port"] == startup["port"] == config.port
    assert readiness.get("service", "") == ""  # servable models and not draining, not just a process
    assert liveness["service"] == startup["service"] == LIVENESS_NAME  # never restarts a pod for waiting on models
    startup_budget = container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
    assert startup_budget >= 60, "a cold node needs time to import torch and load the models"


def test_the_pod_outlives_its_drain(manifest: list[dict[str, Any]]) -> None:
    """preStop sleep, then SIGTERM and at most --grace of drain, all inside terminationGracePeriodSeconds."""
    deployment = _one(manifest, "Deployment")
    container = _container(deployment)
    config = _config(deployment)
    pre_stop = _pre_stop_seconds(container)
    assert 0 < pre_stop <= 10, "long enough for endpoint removal to reach kube-proxy and DNS, short enough to roll"
    assert config.grace > 0
    grace_period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_period >= pre_stop + config.grace + 5, "the kubelet would SIGKILL a pod still draining"


def test_rollouts_and_disruptions_keep_capacity(manifest: list[dict[str, Any]]) -> None:
    deployment = _one(manifest, "Deployment")
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1  # a new pod is ready before an old one drains
    pdb = _one(manifest, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1  # a node drain proceeds, one pod at a time
    assert deployment["spec"]["replicas"] >= 2, "with one replica the PDB's one disruption takes the service down"


def test_the_autoscaler_targets_the_deployment_on_sessions_then_cpu(manifest: list[dict[str, Any]]) -> None:
    deployment = _one(manifest, "Deployment")
    hpa = _one(manifest, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] < hpa["spec"]["maxReplicas"]
    sessions, cpu = hpa["spec"]["metrics"]
    # what fills a replica first: its stream places, as the per-pod gauge the server exports
    assert sessions["type"] == "Pods" and sessions["pods"]["metric"]["name"] == "hamlet_active_sessions"
    target = sessions["pods"]["target"]
    assert target["type"] == "AverageValue" and 0 < int(target["averageValue"]) < _config(deployment).max_sessions
    rules = yaml.safe_load((DEPLOY / "k8s" / "custom-metrics" / "prometheus-adapter-rules.yaml").read_text())
    assert [r["name"]["as"] for r in rules["rules"]["custom"]] == ["hamlet_active_sessions"]
    # the fallback every cluster has
    assert cpu["type"] == "Resource" and cpu["resource"]["name"] == "cpu"
    assert cpu["resource"]["target"]["type"] == "Utilization"
    resources = _container(deployment)["resources"]
    assert "cpu" in resources["requests"], "utilisation is measured against the CPU request"
    assert {"cpu", "memory"} <= set(resources["limits"])


def test_both_services_select_the_deployments_pods(manifest: list[dict[str, Any]]) -> None:
    deployment = _one(manifest, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    balanced, headless = _services(manifest)
    assert balanced["spec"]["selector"] == headless["spec"]["selector"]
    assert balanced["spec"]["selector"].items() <= labels.items()
    assert balanced["spec"].get("type", "ClusterIP") == "ClusterIP"
    # Clients of the headless Service dial each pod IP on the Service's port: it must be the container's port.
    assert headless["metadata"]["name"] == HEADLESS
    assert not headless["spec"].get("publishNotReadyAddresses", False)  # a draining pod leaves DNS
    config = _config(deployment)
    assert [(p["port"], p["targetPort"]) for p in headless["spec"]["ports"]] == [(config.port, "grpc")]
    assert {p["port"] for p in balanced["spec"]["ports"]} == {config.port, config.metrics_port}
    assert all(p["appProtocol"] == "grpc" for p in headless["spec"]["ports"] + balanced["spec"]["ports"][:1])


def test_the_pod_cannot_pick_up_hamlet_variables_from_service_links(manifest: list[dict[str, Any]]) -> None:
    # With service links a Service named "hamlet" injects HAMLET_PORT=tcp://10.0.0.1:50051: the server would refuse it.
    pod = _one(manifest, "Deployment")["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    with pytest.raises(ValueError, match="port"):
        config_from_args(None, environ={"HAMLET_PORT": "tcp://10.0.0.1:50051"})


def test_models_are_a_read_only_volume_at_the_servers_repository(manifest: list[dict[str, Any]]) -> None:
    deployment = _one(manifest, "Deployment")
    container = _container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == _config(deployment).models]
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["persistentVolumeClaim"]["readOnly"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/tmp" and "emptyDir" in volumes[m["name"]] for m in container["volumeMounts"])


def test_k8s_requires_a_token_from_a_secret_and_exposes_metrics_to_the_scraper(manifest: list[dict[str, Any]]) -> None:
    deployment = _one(manifest, "Deployment")
    template = deployment["spec"]["template"]
    pod = template["spec"]
    container = _container(deployment)
    config = _config(deployment)  # starts: not refused
    assert not is_loopback(config.host) and not config.allow_insecure and config.token_file
    assert _secret_of(pod, container, config.token_file) == "hamlet-serve-token"
    assert config.metrics_host == "0.0.0.0"  # Prometheus scrapes the pod IP
    assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == config.metrics_port


def _secret_of(pod: dict[str, Any], container: dict[str, Any], path: str) -> str:
    """The name of the Secret whose read-only mount holds file ``path``."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    found = [secrets[m["name"]] for m in container["volumeMounts"]
             if m["name"] in secrets and path.startswith(m["mountPath"] + "/") and m["readOnly"]]  # fmt: skip
    assert len(found) == 1, f"{path}: expected on one read-only Secret mount, found {found}"
    return found[0]


def test_k8s_signs_snapshots_with_a_key_from_its_own_secret(manifest: list[dict[str, Any]]) -> None:
    """The replicas share a snapshot key that no client holds: a Secret apart from the bearer token's."""
    deployment = _one(manifest, "Deployment")
    pod, container = deployment["spec"]["template"]["spec"], _container(deployment)
    config = _config(deployment)
    assert config.snapshot_key_file and not config.allow_unsigned_snapshots
    assert _secret_of(pod, container, config.snapshot_key_file) == "hamlet-serve-snapshot-key"
    assert {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {
        "hamlet-serve-token",
        "hamlet-serve-snapshot-key",
    }


# ----------------------------------------------------------------------------------------------- the two variants


def test_the_cpu_variant_runs_three_replicas_on_the_cpu() -> None:
    deployment = _one(_docs(CPU), "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert _config(deployment).device in ("auto", "cpu")
    assert not any(k.startswith("nvidia.com/") for k in _container(deployment)["resources"]["limits"])


def test_the_gpu_variant_asks_for_one_gpu_and_serves_on_it() -> None:
    deployment = _one(_docs(GPU), "Deployment")
    container = _container(deployment)
    config = _config(deployment)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert config.device == "cuda"  # refused at start without CUDA, never a silent CPU fallback
    assert config.backend == "torch"  # the onnx backend runs on the CPU only
    assert container["image"].endswith("-cuda")  # the cuda target of deploy/Dockerfile


def _without_gpu_differences(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents with the fields the GPU variant may change removed."""
    docs = copy.deepcopy(docs)
    deployment = _one(docs, "Deployment")
    deployment["spec"].pop("replicas")
    pod = deployment["spec"]["template"]["spec"]
    pod.pop("tolerations", None)
    container = _container(deployment)
    for key in ("image", "resources"):
        container.pop(key)
    container["env"] = [e for e in container["env"] if e["name"] not in ("HAMLET_DEVICE", "HAMLET_BACKEND")]
    hpa = _one(docs, "HorizontalPodAutoscaler")
    hpa["spec"].pop("minReplicas")
    hpa["spec"].pop("maxReplicas")
    return docs


def test_the_gpu_variant_differs_from_the_cpu_one_only_where_it_must() -> None:
    """Same names, Services, PDB, probes, drain, volumes and security: applying one over the other rolls in place."""
    assert _without_gpu_differences(_docs(GPU)) == _without_gpu_differences(_docs(CPU))


# ----------------------------------------------------------------------------------------------- image and compose


def test_the_image_alone_binds_all_interfaces_and_is_refused_until_the_runner_chooses_protection() -> None:
    env = _image_env()
    assert env["HAMLET_HOST"] == "0.0.0.0" and "HAMLET_ALLOW_INSECURE" not in env and "HAMLET_TOKEN_FILE" not in env
    with pytest.raises(ValueError, match="--allow-insecure"):
        config_from_args(None, environ=env)
    assert config_from_args(None, environ={**env, "HAMLET_ALLOW_INSECURE": "true"}).metrics_host == "0.0.0.0"


def test_compose_publishes_on_loopback_and_mounts_models_read_only() -> None:
    service = _compose()
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    config = config_from_args(None, environ={**_image_env(), **service["environment"]})
    assert f"../models:{config.models}:ro" in service["volumes"]


def test_compose_serves_without_token_only_because_it_publishes_on_loopback() -> None:
    service = _compose()
    config = config_from_args(None, environ={**_image_env(), **service["environment"]})  # starts: not refused
    assert not is_loopback(config.host) and config.allow_insecure and not config.token_file
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])


def test_compose_agrees_with_kubernetes_on_ports_image_and_drain() -> None:
    service = _compose()
    compose = config_from_args(None, environ={**_image_env(), **service["environment"]})
    deployment = _one(_docs(CPU), "Deployment")
    k8s = _config(deployment)
    published = {int(p.split(":")[1]): int(p.split(":")[2]) for p in service["ports"]}
    assert published == {compose.port: k8s.port, compose.metrics_port: k8s.metrics_port}
    # the same image (compose builds it here; the cluster pulls it from a registry), the same target
    assert service["image"] == "hamlet-serve:cpu" and service["build"]["target"] == "cpu"
    assert _container(deployment)["image"].rsplit("/", 1)[1].split(":")[0] == "hamlet-serve"
    assert compose.grace == k8s.grace  # one drain budget wherever the image runs
    assert _seconds(service["stop_grace_period"]) > compose.grace, "docker would SIGKILL a server still draining"
