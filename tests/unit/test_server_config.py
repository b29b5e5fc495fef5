"""ServerConfig: flags, HAMLET_* environment variables, validation."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from hamlet_server.config import (
    ServerConfig,
    add_arguments,
    config_from_args,
    is_loopback,
    parse_flags,
    to_flags,
)


def test_defaults_bind_loopback_with_one_thread():
    config = ServerConfig()
    assert (config.host, config.port, config.device, config.threads) == ("127.0.0.1", 50051, "auto", 1)


def test_flags_beat_environment_which_beats_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "6000", "--max-delay-us", "250"])
    env = {"HAMLET_MODELS": "/srv/models", "HAMLET_PORT": "7000", "HAMLET_SESSION_TTL": "2.5"}
    config = config_from_args(args, environ=env)
    assert config.port == 6000 and config.models == Path("/srv/models") and config.session_ttl == 2.5
    assert config.max_delay_us == 250


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--max-sessions", "0"], "max_sessions"), (["--threads", "0"], "threads"), (["--port", "x"], "expected int")],
)
def test_bad_settings_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_flags(flags)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_binds_need_no_protection(host):
    assert is_loopback(host)
    assert ServerConfig(host=host).host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "192.0.2.7", "fd00::2", "example.org", ""])
def test_public_bind_without_token_or_tls_is_refused_naming_the_flag_that_allows_it(host):
    assert not is_loopback(host)
    with pytest.raises(ValueError, match=rf"--host {re.escape(host)} is reachable .* pass --allow-insecure"):
        ServerConfig(host=host)
    for protection in ({"token_file": "token"}, {"tls_cert": "c.pem", "tls_key": "k.pem"}, {"allow_insecure": True}):
        assert ServerConfig(host=host, **protection).host == host


def test_allow_insecure_is_a_switch_and_an_environment_variable():
    assert parse_flags(["--host", "0.0.0.0", "--allow-insecure"]).allow_insecure is True
    assert parse_flags(["--host", "0.0.0.0", "--allow-insecure", "yes"]).allow_insecure is True
    assert parse_flags(["--forward-thread", "false"]).forward_thread is False  # bool flags still take a value
    env = {"HAMLET_HOST": "0.0.0.0", "HAMLET_ALLOW_INSECURE": "true"}
    assert config_from_args(None, environ=env).allow_insecure is True
    with pytest.raises(ValueError, match="--allow-insecure"):
        config_from_args(None, environ={"HAMLET_HOST": "0.0.0.0", "HAMLET_ALLOW_INSECURE": "false"})


def test_metrics_bind_loopback_whatever_the_grpc_host():
    config = ServerConfig(host="0.0.0.0", token_file="token")
    assert config.metrics_host == "127.0.0.1"
    assert config_from_args(None, environ={"HAMLET_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"


@pytest.mark.parametrize("device", ["tpu", "mps", "cuda:", "cuda:x", "CPU", "gpu"])
def test_unknown_devices_are_refused(device):
    with pytest.raises(ValueError, match=rf"--device {re.escape(device)}: unknown device; use auto, cpu, cuda"):
        ServerConfig(device=device)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_known_devices_pass_the_config(device):
    assert ServerConfig(device=device).device == device


def test_the_default_backend_is_onnx_on_the_cpu_and_torch_elsewhere() -> None:
    from hamlet_server.backends import resolve_backend

    assert ServerConfig().backend == "auto"
    assert resolve_backend("auto", "cpu") == "onnx"  # onnx and onnxruntime are installed with the dev extra
    assert resolve_backend("auto", "cuda") == "torch" and resolve_backend("auto", "cuda:1") == "torch"
    assert resolve_backend("torch", "cpu") == "torch" and resolve_backend("onnx", "cpu") == "onnx"


def test_to_flags_rebuilds_every_setting() -> None:
    config = ServerConfig(port=0, workers=3, backend="torch", enable_watch=True, session_ttl=12.5, token_file="")
    assert parse_flags(to_flags(config)) == config


def test_worker_config_shares_the_port_and_offsets_metrics() -> None:
    from hamlet_server.workers import worker_config

    config = ServerConfig(port=0, workers=3, metrics_port=9500)
    second = worker_config(config, 2, 41234)
    assert (second.port, second.metrics_port, second.workers, second.reuse_port) == (41234, 9502, 1, True)
    assert worker_config(dataclasses.replace(config, metrics_port=0), 2, 41234).metrics_port == 0  # stays off
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ServerConfig(workers=0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "9466", "--workers", "4"], "--metrics-port 9464 with --workers 4 (ports 9464..9467, one per "
         "worker) includes the gRPC --port 9466; pick a --metrics-port that keeps clear of --port"),
        (["--port", "9464"], "--metrics-port 9464 includes the gRPC --port 9464"),
        (["--metrics-port", "65534", "--workers", "3"], "(ports 65534..65536, one per worker) go past port 65535"),
    ],
)  # fmt: skip
def test_metrics_ports_of_the_workers_must_keep_clear_of_the_grpc_port(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_flags(flags)


def test_metrics_ports_beside_the_grpc_port_or_disabled_are_fine():
    assert list(parse_flags(["--port", "9468", "--workers", "4"]).metrics_ports) == [9464, 9465, 9466, 9467]
    assert list(parse_flags(["--port", "9466", "--workers", "4", "--metrics-port", "0"]).metrics_ports) == []
    assert parse_flags(["--port", "0", "--metrics-port", "9464"]).port == 0  # a free port is checked once picked


def test_serving_md_lists_every_flag_and_no_other() -> None:
    """docs/SERVING.md's flags table names each ServerConfig field's flag and environment variable."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "SERVING.md").read_text()
    table = text.split("## Flags", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(--[a-z-]+)`", table, re.M)) | set(re.findall(r" / `(--[a-z-]+)` \|", table))
    expected = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(ServerConfig)}
    assert documented == expected, f"missing: {sorted(expected - documented)}; unknown: {sorted(documented - expected)}"
    for name in expected:
        assert f"`HAMLET_{name[2:].replace('-', '_').upper()}`" in table, name


def test_a_free_port_picked_inside_the_workers_metrics_ports_is_refused(monkeypatch) -> None:
    import contextlib

    from hamlet_server import workers
    from hamlet_server.startup import StartupError

    monkeypatch.setattr(workers, "_reserve_port", lambda host, port: contextlib.nullcontext(9465))  # "picked"
    monkeypatch.setattr(workers, "_Supervisor", None)  # reaching it would start processes: a failure here
    with pytest.raises(StartupError, match=r"--port 0 picked port 9465, inside the /metrics ports 9464..9466"):
        workers.supervise(ServerConfig(port=0, workers=3, metrics_port=9464))
