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
| anything else        | `HamletError`            |                    |
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "CancelledError",
    "CapacityExceededError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "HamletError",
    "InternalError",
    "InvalidArgumentError",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "error_for_code",
    "from_rpc_error",
]


class HamletError(Exception):
    """Base class of every error raised by `hamlet_client`.

    Attributes:
        message: the server's message (or the client's, for errors found before sending).
        code: the gRPC status code, or None when the error has none.
    """

    default_code: grpc.StatusCode | None = None

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        code = self.code.name if self.code is not None else None
        return f"{type(self).__name__}({self.message!r}, code={code})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.code))


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


class InternalError(HamletError):
    """INTERNAL, UNKNOWN or DATA_LOSS: a fault on the server; the message says what it knows."""

    default_code = grpc.StatusCode.INTERNAL


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


def error_for_code(code: grpc.StatusCode | None, message: str) -> HamletError:
    """The `HamletError` subclass instance for a status code (the base class for unmapped codes)."""
    cls = _BY_CODE.get(code, HamletError) if code is not None else HamletError
    return cls(message, code)


def from_rpc_error(error: grpc.RpcError) -> HamletError:
    """Translate a `grpc.RpcError` (sync or aio) into its `HamletError`, keeping message and code."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    message = details or (f"gRPC call failed with {code.name}" if code is not None else str(error))
    return error_for_code(code, message)
