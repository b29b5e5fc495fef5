"""Transport security and authentication: optional TLS and a bearer token checked on every call.

Health checks and reflection stay open (probes and tools need no token); every `hamlet.v1` method needs
``authorization: Bearer <token>`` when a token is configured, else it fails with UNAUTHENTICATED.

`read_token` and `server_credentials` check their files before the server binds and raise ValueError with one
line naming the flag and what to change (a missing file, an empty token, a key that is not the certificate's).
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

__all__ = ["BearerTokenInterceptor", "read_token", "server_credentials"]

_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def read_token(path: str) -> str | None:
    """The token in file ``path`` (surrounding white space stripped); None when ``path`` is empty."""
    if not path:
        return None
    try:
        token = _read("--token-file", path).decode().strip()
    except UnicodeDecodeError:
        raise ValueError(f"--token-file {path}: not a text file; put the bearer token in it as text") from None
    if not token:
        raise ValueError(f"--token-file {path}: the token file is empty; put the bearer token clients must send in it")
    return token


def server_credentials(cert_path: str, key_path: str) -> grpc.ServerCredentials | None:
    """TLS credentials from a PEM certificate chain and private key; None when neither is given.

    The pair is checked with the ssl module first (grpc would only say "Failed to bind" for a key that does
    not belong to the certificate)."""
    if not cert_path and not key_path:
        return None
    if not (cert_path and key_path):
        given = "--tls-cert" if cert_path else "--tls-key"
        raise ValueError(f"TLS needs both --tls-cert and --tls-key (PEM files); only {given} is set")
    cert = _read_pem("--tls-cert", cert_path, b"CERTIFICATE-----")
    key = _read_pem("--tls-key", key_path, b"PRIVATE KEY-----")
    if b"ENCRYPTED" in key:
        raise ValueError(f"--tls-key {key_path}: the key is encrypted; give an unencrypted PEM key")
    _check_pair(cert_path, key_path)
    return grpc.ssl_server_credentials([(key, cert)])


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file; fix the path") from None
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read it ({exc.strerror}); fix the path or its permissions") from None


def _read_pem(flag: str, path: str, marker: bytes) -> bytes:
    data = _read(flag, path)
    if b"-----BEGIN " not in data or marker not in data:
        kind = "certificate chain" if flag == "--tls-cert" else "private key"
        raise ValueError(f"{flag} {path}: not a PEM {kind} (no '-----BEGIN ...{marker.decode()}' block)")
    return data


def _check_pair(cert_path: str, key_path: str) -> None:
    """Raise ValueError unless the key belongs to the certificate and both parse."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path, password=lambda: b"")
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ValueError(
                f"--tls-key {key_path} is not the private key of --tls-cert {cert_path}; give the key the "
                "certificate was issued for"
            ) from None
        raise ValueError(
            f"--tls-cert {cert_path} / --tls-key {key_path}: cannot load them ({exc.reason or exc}); give a PEM "
            "certificate chain and its unencrypted PEM key"
        ) from None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc, unused-ignore]
    """Refuses calls to protected methods unless they carry ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(_OPEN_PREFIXES) or self._authorized(handler_call_details):
            return handler
        return _refusal(handler)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False


def _refusal(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that ends the call with UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or wrong bearer token: send metadata 'authorization: Bearer <token>' "
            "(HamletClient(target, token=...))",
        )

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
