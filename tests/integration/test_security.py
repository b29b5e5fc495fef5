"""Bearer-token authentication and TLS, end to end through the client SDK against a real server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from live_server import ThreadedServer

from hamlet_client import HamletClient, UnauthenticatedError, UnavailableError
from hamlet_server.config import ServerConfig

OBS = np.zeros((1, 91), np.float32)


@pytest.fixture
def token_server(model_dir: Path, tmp_path: Path) -> Iterator[ThreadedServer]:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = ThreadedServer(
        ServerConfig(models=model_dir, port=0, metrics_port=0, poll_interval=0, token_file=str(token_file))
    )
    yield server
    server.stop()


def test_calls_need_the_token(token_server: ThreadedServer) -> None:
    with HamletClient(token_server.target, token="s3cret-token", timeout=30) as client:
        assert client.predict(OBS, model="mlp").q_values.shape == (1, 6)
        with client.episode("mlp") as episode:
            assert episode.step(OBS).actions.shape == (1,)
    for token in (None, "wrong"):
        with HamletClient(token_server.target, token=token, timeout=30) as client:
            with pytest.raises(UnauthenticatedError, match="bearer token"):
                client.predict(OBS, model="mlp")
            with pytest.raises(UnauthenticatedError):
                client.list_models()
            with pytest.raises(UnauthenticatedError), client.episode("mlp") as episode:
                episode.step(OBS)
    assert token_server.sessions() == 0


def test_health_stays_open_without_token(token_server: ThreadedServer) -> None:
    with grpc.insecure_channel(token_server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.slow  # starts openssl to make a certificate
def test_tls(model_dir: Path, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = ThreadedServer(
        ServerConfig(models=model_dir, port=0, metrics_port=0, poll_interval=0, tls_cert=str(cert), tls_key=str(key))
    )
    try:
        target = f"localhost:{server.server.port}"
        with HamletClient(target, tls=cert.read_bytes(), timeout=30) as client:
            assert client.predict(OBS, model="mlp").q_values.shape == (1, 6)
        with HamletClient(target, timeout=5, retry=None) as plain, pytest.raises(UnavailableError) as caught:
            plain.predict(OBS, model="mlp")  # plaintext against a TLS port fails to connect
        # whichever address gRPC reports last ([::1] refused or 127.0.0.1 closed), the message names TLS
        assert "a TLS mismatch: a plaintext client calling a server started with --tls-cert" in caught.value.message
        assert "pass tls=True" in caught.value.message and "--tls" in caught.value.message
    finally:
        server.stop()


def test_bad_security_settings_fail_at_start(model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match=r"--token-file .*: the token file is empty"):
        ThreadedServer(ServerConfig(models=model_dir, port=0, metrics_port=0, poll_interval=0, token_file=str(empty)))
    with pytest.raises(ValueError, match=r"both --tls-cert and --tls-key .* only --tls-cert is set"):
        ThreadedServer(ServerConfig(models=model_dir, port=0, metrics_port=0, poll_interval=0, tls_cert="x.pem"))
