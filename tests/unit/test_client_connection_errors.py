"""A failed connection names its likely causes (issue 24): not only gRPC's last error, which through
``localhost`` often reads ``ipv6 [::1] Connection refused`` even when a plaintext client called a TLS server."""

from __future__ import annotations

import socket

import grpc
import numpy as np
import pytest

from hamlet_client import HamletClient, UnavailableError
from hamlet_client.errors import connection_hint, error_for_code, from_rpc_error

# gRPC's details, as seen on this machine for each case (ports shortened)
REFUSED_V6 = "failed to connect to all addresses; last error: UNKNOWN: ipv6:%5B::1%5D:50051: Failed to connect to remote host: Connection refused"  # noqa: E501
REFUSED_V4 = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: Failed to connect to remote host: Connection refused"  # noqa: E501
CLOSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:50051: Socket closed"


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_closed_socket_names_the_tls_mismatch_first() -> None:
    hint = connection_hint(CLOSED)
    assert hint.startswith(
        ". Likely causes: a TLS mismatch: a plaintext client calling a server started with --tls-cert"
    )
    assert "no server listens on that host:port" in hint and "[::1]" not in hint


def test_connection_refused_names_a_missing_server_first_and_explains_ipv6_localhost() -> None:
    hint = connection_hint(REFUSED_V6)
    assert hint.startswith(". Likely causes: no server listens on that host:port (not started yet, or another --port)")
    assert "TLS mismatch" in hint and "'localhost' is tried as [::1] and 127.0.0.1" in hint
    assert "'localhost' is tried" not in connection_hint(REFUSED_V4)


def test_only_failed_connections_get_a_hint() -> None:
    assert connection_hint("the server is draining; reconnect") == ""
    draining = from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "the server is draining; reconnect"))
    assert draining.message == "the server is draining; reconnect"
    other = from_rpc_error(_FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, CLOSED))
    assert other.message == CLOSED  # only UNAVAILABLE is a connection failure
    assert str(error_for_code(grpc.StatusCode.UNAVAILABLE, CLOSED)) == CLOSED  # in-band errors are left alone


def test_a_real_call_to_a_port_nobody_listens_on_says_so() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again at once: nothing listens there
    with HamletClient(f"localhost:{port}", timeout=5, retry=None) as client, pytest.raises(UnavailableError) as caught:
        client.predict(np.zeros((1, 91), np.float32))
    message = caught.value.message
    assert message.startswith("failed to connect to all addresses")
    assert "Likely causes: no server listens on that host:port" in message and "TLS mismatch" in message
