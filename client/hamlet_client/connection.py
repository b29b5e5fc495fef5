"""How the client reaches the server: channel options (the service config among them: gRPC's retries and
balancing, `hamlet_client.service_config`), TLS credentials and the bearer token. Shared by the sync and
asyncio clients; nothing here makes a network call."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from hamlet_client.service_config import RetryPolicy, service_config

__all__ = [
    "DEFAULT_OPTIONS",
    "RetryPolicy",
    "auth_metadata",
    "channel_credentials",
    "channel_options",
    "channel_target",
]

DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Large batches ([4096, 91] float32 observations, [1, B, 256] hidden states) exceed gRPC's 4 MiB default.
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Notice a dead replica on an idle connection within ~40 s (the server accepts pings every 10 s), and
    # come back quickly once it is up again.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # gRPC keeps a call's request until it commits, so it can retry it; past this size a call is not retried.
    # The default (256 KiB) would leave large Predict batches without retries.
    ("grpc.per_rpc_retry_buffer_size", 64 * 1024 * 1024),
)
"""Channel options the client sets unless ``options`` overrides them."""


def channel_credentials(tls: bool | bytes | grpc.ChannelCredentials | None) -> grpc.ChannelCredentials | None:
    """None/False: plaintext. True: TLS with the system's root certificates. bytes: TLS trusting these PEM
    root certificates (e.g. a self-signed server's). A `grpc.ChannelCredentials` is used as given."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, (bytes, bytearray)):
        return grpc.ssl_channel_credentials(root_certificates=bytes(tls))
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    raise TypeError(f"tls: expected None, a bool, PEM root-certificate bytes or grpc.ChannelCredentials, got {tls!r}")


def channel_options(options: Sequence[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """`DEFAULT_OPTIONS` with the caller's options added (the caller's win on the same key)."""
    merged = dict(DEFAULT_OPTIONS)
    merged.update(dict(options or ()))
    return list(merged.items())


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The per-call metadata that carries a bearer token, or None without one."""
    if token is None:
        return None
    if not isinstance(token, str) or not token or any(ch in token for ch in "\r\n"):
        raise ValueError("token: expected a non-empty string without line breaks")
    return (("authorization", f"Bearer {token}"),)


def channel_target(target: str | Sequence[str]) -> tuple[str, bool]:
    """The gRPC target for ``target`` and whether to balance across its addresses (``round_robin``).

    One ``"host:port"`` (or any gRPC target string) is used as given; ``"dns:///name:port"`` is balanced over
    every address the name resolves to (a Kubernetes headless Service). Several ``"ip:port"`` strings
    (``localhost`` allowed) become one ``ipv4:``/``ipv6:`` target balanced over all of them.
    """
    if isinstance(target, str):
        if not target:
            raise ValueError("target: expected 'host:port', got an empty string")
        return target, target.startswith("dns:")
    targets = list(target)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target: expected 'host:port' or a non-empty list of them, got {target!r}")
    if len(targets) == 1:
        return channel_target(targets[0])
    hosts = [_ip_literal(t) for t in targets]
    families = {family for family, _ in hosts}
    if len(families) != 1:
        raise ValueError(f"target: mix of IPv4 and IPv6 addresses in {targets}; use one family")
    return f"{families.pop()}:{','.join(address for _, address in hosts)}", True


def _ip_literal(target: str) -> tuple[str, str]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"target: expected 'ip:port' in a list of targets, got {target!r}")
    bare = host.strip("[]")
    if bare == "localhost":
        bare = "127.0.0.1"
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise ValueError(
            f"target: {target!r} is not an IP address; a list of targets takes 'ip:port' entries (for a DNS name "
            "with many addresses, pass 'dns:///name:port')"
        ) from None
    if address.version == 6:
        return "ipv6", f"[{address}]:{port}"
    return "ipv4", f"{address}:{port}"


def open_channel(
    target: str | Sequence[str],
    tls: bool | bytes | grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]] | None,
    *,
    aio: bool,
    retry: RetryPolicy | None = None,
) -> Any:
    """A ``grpc`` (or, with ``aio``, ``grpc.aio``) channel to ``target`` (see `channel_target`): secure when
    ``tls`` is given; its service config retries the idempotent calls per ``retry`` (default `RetryPolicy()`)
    and, over several addresses, balances with ``round_robin`` and health checking (one stream stays on one
    replica; unary calls spread; a draining replica gets no new calls). A ``grpc.service_config`` in
    ``options`` replaces the SDK's."""
    resolved, balance = channel_target(target)
    api: Any = grpc.aio if aio else grpc
    credentials = channel_credentials(tls)
    config = service_config(retry if retry is not None else RetryPolicy(), balance=balance)
    opts = channel_options([("grpc.service_config", config), *(options or ())])
    if credentials is None:
        return api.insecure_channel(resolved, options=opts)
    return api.secure_channel(resolved, credentials, options=opts)
