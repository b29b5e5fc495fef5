"""The deployment files agree with the server: every HAMLET_* setting they use exists, ports line up."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hamlet_server.config import ENV_PREFIX, ServerConfig, config_from_args, is_loopback
from hamlet_server.server import LIVENESS_NAME

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTINGS = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(ServerConfig)}


def test_every_hamlet_variable_in_deploy_files_is_a_server_setting() -> None:
    used = set()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            used |= set(re.findall(r"\bHAMLET_[A-Z_]+\b", path.read_text()))
    assert used, "the deploy files set no HAMLET_* variable at all"
    assert used <= SETTINGS, f"unknown settings: {sorted(used - SETTINGS)}"


def test_compose_publishes_on_loopback_and_mounts_models_read_only() -> None:
    service = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["hamlet-serve"]
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    assert "../models:/models:ro" in service["volumes"]


def test_k8s_probes_and_grace() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "hamlet-serve.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] > float(env["HAMLET_GRACE"])
    assert container["readinessProbe"]["grpc"]["port"] == 50051 == ServerConfig().port
    assert container["readinessProbe"]["grpc"].get("service", "") == ""  # servable models, not just a process
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS_NAME  # never restarts a pod for waiting
    service = next(d for d in docs if d["kind"] == "Service")
    assert {p["port"] for p in service["spec"]["ports"]} == {50051, ServerConfig().metrics_port}


def _image_env() -> dict[str, str]:
    """The HAMLET_* variables the Dockerfile's ENV lines set."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in line[4:].split()))
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}


def _k8s_deployment() -> dict[str, Any]:
    docs = yaml.safe_load_all((DEPLOY / "k8s" / "hamlet-serve.yaml").read_text())
    return next(d for d in docs if d["kind"] == "Deployment")  # type: ignore[no-any-return]


def test_the_image_alone_binds_all_interfaces_and_is_refused_until_the_runner_chooses_protection() -> None:
    env = _image_env()
    assert env["HAMLET_HOST"] == "0.0.0.0" and "HAMLET_ALLOW_INSECURE" not in env and "HAMLET_TOKEN_FILE" not in env
    with pytest.raises(ValueError, match="--allow-insecure"):
        config_from_args(None, environ=env)
    assert config_from_args(None, environ={**env, "HAMLET_ALLOW_INSECURE": "true"}).metrics_host == "0.0.0.0"


def test_compose_serves_without_token_only_because_it_publishes_on_loopback() -> None:
    service = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["hamlet-serve"]
    config = config_from_args(None, environ={**_image_env(), **service["environment"]})  # starts: not refused
    assert not is_loopback(config.host) and config.allow_insecure and not config.token_file
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])


def test_k8s_requires_a_token_from_a_secret_and_exposes_metrics_to_the_scraper() -> None:
    template = _k8s_deployment()["spec"]["template"]
    pod = template["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    config = config_from_args(None, environ={**_image_env(), **env})  # starts: not refused
    assert not is_loopback(config.host) and not config.allow_insecure and config.token_file
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    mounts = [m for m in container["volumeMounts"] if m["name"] in secrets]
    assert any(config.token_file.startswith(m["mountPath"] + "/") and m["readOnly"] for m in mounts)
    assert config.metrics_host == "0.0.0.0"  # Prometheus scrapes the pod IP
    assert int(template["metadata"]["annotations"]["prometheus.io/port"]) == config.metrics_port
