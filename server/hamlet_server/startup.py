"""Startup checks: each misconfiguration the server can detect before serving, as one line saying what to change.

`check_startup(config)` runs before any model is loaded (`hamlet-server serve` calls it first): the model
directory, the device, the token file, the snapshot key file, the TLS pair, and whether the gRPC and metrics
ports can be bound. The binds themselves (`bind_grpc`, `serve_metrics`) turn a failure that slipped past the
check (a port taken in between) into the same kind of line. Every problem is a `StartupError`, which the CLI
prints as ``hamlet-server: <message>`` before exiting with status 2.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path

import grpc

from hamlet_server.config import ServerConfig
from hamlet_server.metrics import ServerMetrics
from hamlet_server.security import read_token, server_credentials
from hamlet_server.snapshot_keys import read_snapshot_keys

__all__ = ["StartupError", "bind_grpc", "check_device", "check_startup", "grpc_address", "serve_metrics"]

_GRPC = ("--host", "--port")
_METRICS = ("--metrics-host", "--metrics-port")


class StartupError(ValueError):
    """A setting the server cannot start with; the message is one line naming the flag to change."""


def check_startup(config: ServerConfig) -> None:
    """Raise StartupError for the first setting the server cannot start with; cheap (loads no model)."""
    try:
        if not Path(config.models).is_dir():
            raise StartupError(f"--models {config.models}: not a directory; point it at a model repository")
        check_device(config.device)
        read_token(config.token_file)
        read_snapshot_keys(config.snapshot_key_file)
        server_credentials(config.tls_cert, config.tls_key)
    except StartupError:
        raise
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    _check_port(_GRPC, config.host, config.port, reuse_port=config.reuse_port)
    if config.metrics_port:  # --workers N: worker i serves /metrics on --metrics-port + i
        for port in range(config.metrics_port, config.metrics_port + config.workers):
            _check_port(_METRICS, config.metrics_host, port)


def check_device(device: str) -> None:
    """`auto`, `cpu`, or a CUDA device this machine has (torch is imported only for `cuda...`)."""
    if device in ("auto", "cpu"):
        return
    if device != "cuda" and not device.startswith("cuda:"):
        raise StartupError(f"--device {device}: unknown device; use auto, cpu, cuda or cuda:N")
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise StartupError(
            f"--device {device}: this server is installed without torch, which CUDA serving needs; use --device "
            "cpu (with --backend onnx), or install hamlet-server[torch] with a CUDA build of torch"
        )
    import torch

    if not torch.cuda.is_available():
        raise StartupError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise StartupError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0..cuda:{torch.cuda.device_count() - 1}; pick one of them"
        )


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC parses it: IPv6 literals in brackets (``[::]:50051``)."""
    bare = host.strip("[]")
    try:
        if ipaddress.ip_address(bare).version == 6:
            return f"[{bare}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def bind_grpc(server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
    """Add the listening port to ``server``; returns the bound port, or raises StartupError saying why not."""
    address = grpc_address(host, port)
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc says only "Failed to bind": find out why with a plain socket
        bound = 0
    if bound == 0:
        raise StartupError(_bind_problem(_GRPC, host, port) or f"--port {port}: cannot bind {address}")
    return int(bound)


def serve_metrics(metrics: ServerMetrics, host: str, port: int) -> int:
    """Start /metrics on ``host:port``; returns the bound port, or raises StartupError saying why not."""
    try:
        return metrics.serve(port, host)
    except OSError as exc:
        problem = _describe(exc, _METRICS, host, port)
        raise StartupError(
            problem or f"--metrics-port {port}: cannot bind {grpc_address(host, port)} ({exc})"
        ) from None


def _check_port(flags: tuple[str, str], host: str, port: int, reuse_port: bool = False) -> None:
    problem = _bind_problem(flags, host, port, reuse_port)
    if problem:
        raise StartupError(problem)


def _bind_problem(flags: tuple[str, str], host: str, port: int, reuse_port: bool = False) -> str | None:
    """Why ``host:port`` cannot be bound (as the servers bind it: SO_REUSEADDR, plus SO_REUSEPORT for a
    --workers process), or None if it can."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"{flags[0]} {host}: does not resolve ({exc.strerror}); give an address of this machine"
    problems = []
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                address = grpc_address(host, port)
                problems.append(
                    _describe(exc, flags, host, port) or f"{flags[1]} {port}: cannot bind {address} ({exc})"
                )
    taken = [p for p in problems if "in use" in p]  # one address taken is enough to fail (localhost: v4 and v6)
    if taken or len(problems) == len(infos):
        return (taken or problems)[0]
    return None


def _describe(exc: OSError, flags: tuple[str, str], host: str, port: int) -> str | None:
    host_flag, port_flag = flags
    address = grpc_address(host, port)
    if exc.errno == errno.EADDRINUSE:
        off = " (0 turns /metrics off)" if port_flag == "--metrics-port" else " (0 picks a free one)"
        return (
            f"{port_flag} {port}: {address} is already in use (another hamlet-server?); pick another {port_flag}"
            f"{off} or stop the process that holds it"
        )
    if exc.errno == errno.EACCES:
        return f"{port_flag} {port}: permission denied binding {address}; pick a port >= 1024"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{host_flag} {host}: not an address of this machine; use 127.0.0.1, 0.0.0.0 (with a token or TLS) "
            "or one of its own addresses"
        )
    return None
