"""`hamlet-server health`: ask a running server's grpc.health.v1 service whether it is SERVING.

The container image's HEALTHCHECK runs it, so it reads the same settings as `serve` from the environment:
HAMLET_PORT (the port the server was told to use, not a hard-coded 50051), HAMLET_HOST (an any-address bind
such as 0.0.0.0 or :: is asked on the loopback) and HAMLET_TLS_CERT (TLS, trusting that certificate). Health
needs no token. Exit status: 0 SERVING, 1 anything else (NOT_SERVING, draining, no answer), 2 a usage error.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hamlet_server.startup import grpc_address

__all__ = ["add_health_arguments", "check_health", "run_health"]

_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def check_health(host: str, port: int, service: str = "", tls_cert: str = "", timeout: float = 2.0) -> str:
    """The health status name of ``service`` ("" is the whole server) at host:port, e.g. "SERVING"; the gRPC
    status code's name ("UNAVAILABLE", "NOT_FOUND", ...) when the call fails."""
    target = grpc_address("127.0.0.1" if host in _ANY_ADDRESS else host, port)
    if tls_cert:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_cert).read_bytes())
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    parser.add_argument(
        "--host",
        default=env.get("HAMLET_HOST", "127.0.0.1"),
        help="server address (env HAMLET_HOST; 0.0.0.0 and :: mean this machine's loopback)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("HAMLET_PORT", "50051")),
        help="gRPC port (env HAMLET_PORT, default 50051)",
    )
    parser.add_argument(
        "--tls-cert",
        default=env.get("HAMLET_TLS_CERT", ""),
        help="the server's PEM certificate: ask over TLS, trusting it (env HAMLET_TLS_CERT)",
    )
    parser.add_argument("--service", default="", help="'' (the server) or hamlet.v1.InferenceService/MODEL")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer (default 2)")


def run_health(args: argparse.Namespace) -> int:
    status = check_health(args.host, args.port, args.service, args.tls_cert, args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1
