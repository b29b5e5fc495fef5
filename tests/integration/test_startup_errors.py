"""Startup misconfigurations: one line on stderr naming what to change, exit status 2, never a traceback.

The subprocess tests run `python -m hamlet_server.cli serve ...` as an operator would; the in-process tests
take the same problems past the up-front check (a port taken between the check and the bind).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ports import free_port

from hamlet_server.config import ServerConfig
from hamlet_server.server import HamletServer
from hamlet_server.startup import StartupError, check_startup


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other process is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def _serve(*flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMLET_")}
    return subprocess.run(
        [sys.executable, "-m", "hamlet_server.cli", "serve", *flags],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def _assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("hamlet-server: "), result.stderr
    assert "Traceback" not in result.stderr and "READY" not in result.stdout
    for text in expected:
        assert text in lines[0]
    return lines[0]


def _pem_pair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.slow
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.org"])
def test_public_bind_without_token_or_tls_is_refused(model_dir: Path, host: str) -> None:
    line = _assert_refused(_serve("--models", str(model_dir), "--host", host, "--port", "0"), f"--host {host}")
    assert "--allow-insecure" in line and "--token-file" in line


@pytest.mark.slow
def test_public_bind_with_allow_insecure_starts_and_metrics_stay_on_loopback(model_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMLET_")}
    cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", str(model_dir), "--host", "0.0.0.0",
           "--port", "0", "--metrics-port", "0", "--poll-interval", "0", "--allow-insecure"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY 0.0.0.0:")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "WARNING" in stderr and "--allow-insecure" in stderr  # said out loud, not silent


@pytest.mark.slow
def test_unknown_device(model_dir: Path) -> None:
    _assert_refused(_serve("--models", str(model_dir), "--device", "tpu"), "--device tpu", "cpu")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(model_dir: Path) -> None:
    _assert_refused(_serve("--models", str(model_dir), "--device", "cuda"), "--device cuda", "not available")


@pytest.mark.slow
def test_models_not_a_directory(tmp_path: Path) -> None:
    _assert_refused(_serve("--models", str(tmp_path / "missing")), "--models", "not a directory")


@pytest.mark.slow
def test_token_file_missing_unreadable_or_empty(model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-token"
    empty.write_text(" \n")
    cases = {tmp_path / "no-such-token": "no such file", tmp_path: "cannot read it", empty: "empty"}
    for path, problem in cases.items():
        result = _serve("--models", str(model_dir), "--port", "0", "--token-file", str(path))
        _assert_refused(result, f"--token-file {path}", problem)


@pytest.mark.slow
def test_snapshot_key_file_missing_empty_or_too_short(model_dir: Path, tmp_path: Path) -> None:
    empty, short = tmp_path / "empty-keys", tmp_path / "short-keys"
    empty.write_text(" \n")
    short.write_text("0123456789abcdef0123\nshort\n")
    cases = {tmp_path / "no-such-keys": "no such file", empty: "the file is empty", short: "key 2 is 5 bytes"}
    for path, problem in cases.items():
        result = _serve("--models", str(model_dir), "--port", "0", "--snapshot-key-file", str(path))
        _assert_refused(result, f"--snapshot-key-file {path}", problem)
    both = _serve("--models", str(model_dir), "--port", "0", "--snapshot-key-file", str(short),
                  "--allow-unsigned-snapshots")  # fmt: skip
    _assert_refused(both, "--allow-unsigned-snapshots with --snapshot-key-file")


@pytest.mark.slow
def test_tls_mismatch_missing_or_half_configured(model_dir: Path, tmp_path: Path) -> None:
    cert_a, _ = _pem_pair(tmp_path, "a")
    _, key_b = _pem_pair(tmp_path, "b")
    base = ("--models", str(model_dir), "--port", "0")
    _assert_refused(_serve(*base, "--tls-cert", str(cert_a), "--tls-key", str(key_b)), "not the private key")
    _assert_refused(_serve(*base, "--tls-cert", str(tmp_path / "gone.pem"), "--tls-key", str(key_b)), "--tls-cert")
    _assert_refused(_serve(*base, "--tls-cert", str(cert_a), "--tls-key", str(cert_a)), "--tls-key", "not a PEM")
    _assert_refused(_serve(*base, "--tls-cert", str(cert_a)), "--tls-key", "only --tls-cert")


@pytest.mark.slow
def test_grpc_port_taken(model_dir: Path, taken_port: int) -> None:
    result = _serve("--models", str(model_dir), "--port", str(taken_port))
    line = _assert_refused(result, f"--port {taken_port}", "already in use")
    assert "Failed to bind" not in line


@pytest.mark.slow
def test_metrics_port_taken(model_dir: Path, taken_port: int) -> None:
    result = _serve("--models", str(model_dir), "--port", "0", "--metrics-port", str(taken_port))
    _assert_refused(result, f"--metrics-port {taken_port}", "already in use", "0 turns /metrics off")


@pytest.mark.slow
def test_host_not_on_this_machine(model_dir: Path) -> None:
    result = _serve("--models", str(model_dir), "--host", "192.0.2.7", "--port", "0", "--allow-insecure")
    _assert_refused(result, "--host 192.0.2.7", "not an address of this machine")


# ------------------------------------------------------- the same checks in-process (fast suite)


def test_check_startup_names_the_flag_to_change(model_dir: Path, tmp_path: Path, taken_port: int) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    cases = [
        ({"token_file": str(tmp_path / "missing")}, "--token-file .*: no such file"),
        ({"token_file": str(empty)}, "--token-file .*: the token file is empty"),
        ({"tls_key": "k.pem"}, "only --tls-key is set"),
        ({"port": taken_port}, f"--port {taken_port}: .* already in use"),
        ({"metrics_port": taken_port}, f"--metrics-port {taken_port}: .* already in use"),
        ({"models": tmp_path / "nothing"}, "--models .*: not a directory"),
    ]
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "--device cuda: CUDA is not available"))
    for settings, message in cases:
        with pytest.raises(StartupError, match=message):
            check_startup(_config(model_dir, **settings))
    with pytest.raises(ValueError, match="--metrics-port 9999 includes the gRPC --port 9999"):
        _config(model_dir, metrics_port=9999, port=9999)  # refused by the settings themselves, before any check
    check_startup(_config(model_dir))  # the defaults pass


# ------------------------------------------------------- past the up-front check: the binds say the same


def _config(model_dir: Path, **overrides: object) -> ServerConfig:
    settings: dict[str, object] = {"models": model_dir, "port": 0, "metrics_port": 0, "poll_interval": 0,
                                   "device": "cpu"}  # fmt: skip
    settings.update(overrides)
    return ServerConfig(**settings)  # type: ignore[arg-type]


async def test_bind_of_a_taken_grpc_port_is_a_startup_error(model_dir: Path, taken_port: int) -> None:
    server = HamletServer(_config(model_dir, port=taken_port))
    with pytest.raises(StartupError, match=rf"^--port {taken_port}: 127\.0\.0\.1:{taken_port} is already in use"):
        await server.start()


async def test_bind_of_a_taken_metrics_port_is_a_startup_error(model_dir: Path, taken_port: int) -> None:
    server = HamletServer(_config(model_dir, metrics_port=taken_port))
    with pytest.raises(StartupError, match=rf"^--metrics-port {taken_port}: .* already in use"):
        await server.start()


async def test_metrics_bind_loopback_unless_metrics_host_says_otherwise(model_dir: Path) -> None:
    cases = [
        ({"host": "0.0.0.0", "allow_insecure": True}, "127.0.0.1"),  # a public gRPC bind leaves /metrics local
        ({"metrics_host": "0.0.0.0"}, "0.0.0.0"),
    ]
    for settings, metrics_host in cases:
        server = HamletServer(_config(model_dir, metrics_port=free_port(), **settings))
        await server.start()
        try:
            assert server.metrics.address == (metrics_host, server.metrics_port)
        finally:
            await server.drain(grace=0.1)
