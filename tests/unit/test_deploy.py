"""The deployment files agree with the server: every HAMLET_* setting they use exists, ports line up."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from hamlet_server.config import ENV_PREFIX, ServerConfig
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
