"""The client's errors: one class per gRPC status code the Hamlet server uses.

Every error the SDK raises is a `HamletError`. Errors that come from the server carry its message
(``str(err)`` and ``err.message``) and the status code (``err.code``, a `grpc.StatusCode`). Errors the
client detects before sending anything (a ragged observation list, a step on a closed episode) use the
same classes with the code the server would have used, so one ``except`` clause handles both.

    try:
        client.predict(obs)
    except InvalidArgumentError as err:     # also a ValueError
        print(err.code, err.message)
    except UnavailableError:                # also a ConnectionError; already retried for unary calls
        ...

| status code          | class                    | also a             |
| -------------------- | ------------------------ | ------------------ |
| INVALID_ARGUMENT     | `InvalidArgumentError`   | `ValueError`       |
| NOT_FOUND            | `ModelNotFoundError`     | `LookupError`      |
| FAILED_PRECONDITION  | `FailedPreconditionError`|                    |
| RESOURCE_EXHAUSTED   | `CapacityExceededError`  |                    |
| UNAVAILABLE          | `UnavailableError`       | `ConnectionError`  |
| DEADLINE_EXCEEDED    | `DeadlineExceededError`  | `TimeoutError`     |
| UNAUTHENTICATED      | `UnauthenticatedError`   |                    |
| PERMISSION_DENIED    | `PermissionDeniedError`  |                    |
| CANCELLED            | `CancelledError`         |                    |
| UNIMPLEMENTED        | `UnimplementedError`     |                    |
| INTERNAL, UNKNOWN, DATA_LOSS | `InternalError`  |                    |
| DATA_LOSS (client-side)      | `ArtifactIntegrityError` | `InternalError` |
| anything else        | `HamletError`            |                    |

When the server ends an episode stream it says why in-band (an ``EpisodeEnded`` response); the next
``step`` raises the class for that reason: `SessionExpiredError` (a `DeadlineExceededError`) for
``idle_timeout`` and ``start_timeout``, `ServerDrainingError` (an `UnavailableError`) for
``server_draining``, else the class of the status code. ``err.reason`` is the server's stable error reason
(``IDLE_TIMEOUT``, ``OBS_WIDTH_MISMATCH``, ``SESSION_LIMIT``, ...; empty when it sent none) and
``err.end_reason`` the stream's end reason (``idle_timeout``, ...; empty outside streams).
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "ArtifactIntegrityError",
    "CancelledError",
    "CapacityExceededError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "HamletError",
    "InternalError",
    "InvalidArgumentError",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "ServerDrainingError",
    "SessionExpiredError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "connection_hint",
    "error_for_code",
    "error_for_ended",
    "from_rpc_error",
    "reason_from_metadata",
    "reason_in",
]

DETAILS_METADATA_KEY = "grpc-status-details-bin"
"""Trailing metadata of the standard rich error details: a serialized ``google.rpc.Status`` whose details
hold a ``google.rpc.ErrorInfo`` (domain ``hamlet.v1``) and, for bad input, a ``google.rpc.BadRequest``."""


class HamletError(Exception):
    """Base class of every error raised by `hamlet_client`.

    Attributes:
        message: the server's message (or the client's, for errors found before sending).
        code: the gRPC status code, or None when the error has none.
        reason: the server's stable error reason (``UNKNOWN_MODEL``, ``IDLE_TIMEOUT``, ...), or "".
        end_reason: for an episode the server ended, why (``idle_timeout``, ``server_draining``, ...), or "".
    """

    default_code: grpc.StatusCode | None = None

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, *, reason: str = "", end_reason: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.reason = reason
        self.end_reason = end_reason

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        code = self.code.name if self.code is not None else None
        return f"{type(self).__name__}({self.message!r}, code={code})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.code, self.reason, self.end_reason))


def _rebuild(cls: type[HamletError], message: str, code: Any, reason: str, end_reason: str) -> HamletError:
    return cls(message, code, reason=reason, end_reason=end_reason)


class InvalidArgumentError(HamletError, ValueError):
    """INVALID_ARGUMENT: a bad observation, hidden state, action mask, epsilon or seed (shape, dtype, NaN)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(HamletError, LookupError):
    """NOT_FOUND: the server hosts no model (or no version) of that name."""

    default_code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(HamletError):
    """FAILED_PRECONDITION: the call is out of order (an episode step before its start, a step on a
    closed episode) or the server cannot use the model file."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class CapacityExceededError(HamletError):
    """RESOURCE_EXHAUSTED: the server is at capacity (sessions, environments, queue) or a message is
    larger than it accepts. Retry later or with a smaller batch."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(HamletError, ConnectionError):
    """UNAVAILABLE: the server cannot be reached or is draining. Unary calls were already retried."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(HamletError, TimeoutError):
    """DEADLINE_EXCEEDED: the call (or episode step) did not finish within its timeout."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnauthenticatedError(HamletError):
    """UNAUTHENTICATED: the server wants a (different) bearer token: pass ``token=``."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(HamletError):
    """PERMISSION_DENIED: the token is valid but may not do this."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class CancelledError(HamletError):
    """CANCELLED: the call was cancelled (by the client, or the server went away mid-stream)."""

    default_code = grpc.StatusCode.CANCELLED


class UnimplementedError(HamletError):
    """UNIMPLEMENTED: the server does not offer this method (an older server or another service)."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class SessionExpiredError(DeadlineExceededError):
    """The server ended the episode for a time limit: ``idle_timeout`` (no message either way for its session
    TTL) or ``start_timeout`` (no start in time). Its state is gone: open a new episode."""


class ServerDrainingError(UnavailableError):
    """The server is shutting down (``server_draining``); the episode's state is gone. Start it again,
    on another replica."""


class InternalError(HamletError):
    """INTERNAL, UNKNOWN or DATA_LOSS: a fault on the server; the message says what it knows."""

    default_code = grpc.StatusCode.INTERNAL


class ArtifactIntegrityError(InternalError):
    """A model artifact (`HamletClient.local_policy`) failed its checks: the bytes do not hash to the sha256
    the server announced, arrive out of order or short, or the ONNX file does not describe the model the
    server said it is. Nothing from it is run. Code DATA_LOSS; raised by the client, never sent by a server."""

    default_code = grpc.StatusCode.DATA_LOSS


_BY_CODE: dict[grpc.StatusCode, type[HamletError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CapacityExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def error_for_code(code: grpc.StatusCode | None, message: str, reason: str = "") -> HamletError:
    """The `HamletError` subclass instance for a status code (the base class for unmapped codes); an error
    reason that names a finer class wins (``SERVER_DRAINING``: a call refused by a draining server is a
    `ServerDrainingError`, whether it was a Predict, a stream's open or a step)."""
    cls = _BY_REASON.get(reason) or (_BY_CODE.get(code, HamletError) if code is not None else HamletError)
    return cls(message, code, reason=reason)


_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_BY_END_REASON: dict[str, type[HamletError]] = {
    "idle_timeout": SessionExpiredError,
    "start_timeout": SessionExpiredError,
    "server_draining": ServerDrainingError,
}
_BY_REASON = {reason.upper(): cls for reason, cls in _BY_END_REASON.items()}  # the error reasons the server sends


def error_for_ended(end_reason: str, message: str, status_code: int, reason: str) -> HamletError:
    """The error for an in-band ``EpisodeEnded``: ``end_reason`` is the lower-case reason (``idle_timeout``),
    ``status_code`` the number of the status the stream closes with."""
    code = _CODE_BY_NUMBER.get(status_code)
    cls = _BY_END_REASON.get(end_reason) or (_BY_CODE.get(code, HamletError) if code is not None else HamletError)
    return cls(message, code, reason=reason, end_reason=end_reason)


def from_rpc_error(error: grpc.RpcError) -> HamletError:
    """Translate a `grpc.RpcError` (sync or aio) into its `HamletError`, keeping message, code and reason; a
    failed connection's message gets its likely causes (`connection_hint`)."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    message = details or (f"gRPC call failed with {code.name}" if code is not None else str(error))
    if code == grpc.StatusCode.UNAVAILABLE:
        message += connection_hint(message)
    return error_for_code(code, message, reason_from_metadata(error))


_NOT_LISTENING = "no server listens on that host:port (not started yet, or another --port)"
_TLS_MISMATCH = (
    "a TLS mismatch: a plaintext client calling a server started with --tls-cert (pass tls=True, or the "
    "server's certificate as tls=PEM bytes; CLIs: --tls), or a TLS client calling a plaintext server"
)
_BOTH_FAMILIES = (
    "'localhost' is tried as [::1] and 127.0.0.1 and gRPC reports only the last failure, so an ipv6 address "
    "or 'Connection refused' here does not rule out a TLS mismatch on 127.0.0.1"
)


def connection_hint(message: str) -> str:
    """The likely causes of a failed connection, most likely first, judged from gRPC's ``message`` (an
    UNAVAILABLE call's details); "" for any other UNAVAILABLE (e.g. a draining server says why itself)."""
    text = message.lower()
    if "failed to connect" not in text and "socket closed" not in text and "handshake" not in text:
        return ""
    if "socket closed" in text or "handshake" in text or "ssl" in text:
        causes = [_TLS_MISMATCH, _NOT_LISTENING]
    else:  # connection refused, timed out, no route: most often nothing listens there
        causes = [_NOT_LISTENING, _TLS_MISMATCH]
    notes = f" ({_BOTH_FAMILIES})" if "[::1]" in message or "%5b::1%5d" in text else ""
    return f". Likely causes: {causes[0]}; or {causes[1]}{notes}."


def reason_from_metadata(call: Any) -> str:
    """The server's error reason from a sync call's (or RpcError's) trailing metadata; "" when absent."""
    trailing_fn = getattr(call, "trailing_metadata", None)
    try:
        trailing = trailing_fn() if callable(trailing_fn) else None
    except Exception:  # a call not finished yet, or a fake in tests
        return ""
    return reason_in(trailing)


def reason_in(metadata: Any) -> str:
    """The ``google.rpc.ErrorInfo`` reason in ``grpc-status-details-bin`` among ``(key, value)`` metadata
    pairs (the standard rich error details); "" when absent or unreadable."""
    from google.rpc import error_details_pb2, status_pb2

    for item in metadata or ():
        key, value = item
        if key != DETAILS_METADATA_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # malformed details must not hide the status itself
            return ""
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return str(info.reason)
    return ""
