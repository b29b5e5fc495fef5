"""Errors -> gRPC status: one rule for the unary RPCs and the streams.

`status_for(exc)` maps any exception raised while serving a request to ``(code, message, error_reason)``:
the status code, a message safe to send (echoed input truncated, no server paths, no terminal escapes, no
foreign library's advice), and a stable
machine-readable reason (``UNKNOWN_MODEL``, ``OBS_WIDTH_MISMATCH``, ``SESSION_LIMIT``, ...) that the
proto comments list. An exception nobody expected is a fault on the server: INTERNAL, logged with its
traceback, never reported as the client's mistake.
"""

from __future__ import annotations

import logging
import re

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hamlet_server.artifacts import BadChunkSizeError, ExportUnavailableError
from hamlet_server.budget import InflightBudgetError
from hamlet_server.repository import ModelLoadError, UnknownModelError, UnknownVersionError
from hamlet_server.sessions import EnvLimitError, StepLimitError
from hamlet_server.streams import SessionLimitError, SlotLimitError, UnstartedLimitError
from hamlet_server.watch import WatcherLimitError
from townlet.inference.errors import InvalidInputError, without_ansi

__all__ = [
    "ERROR_DOMAIN",
    "MAX_MESSAGE_CHARS",
    "RequestError",
    "client_message",
    "rich_status",
    "status_for",
    "truncate",
]

log = logging.getLogger(__name__)
SC = grpc.StatusCode
MAX_MESSAGE_CHARS = 1000
"""Longest status message sent: a message that echoes a huge input (a 100 KB model name) must not push
the status past the metadata limit, which the client would see as RESOURCE_EXHAUSTED."""


_TORCH_ADVICE = re.compile(r"Weights only load failed\..*", re.DOTALL)
"""torch's weights_only refusal: a page of advice to its own caller (re-run with weights_only=False, allowlist
globals) that a client of this server cannot act on."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

ERROR_DOMAIN = "hamlet.v1"
_FIELD = re.compile(r"^([a-z_][a-z0-9_.]*)(?: ([a-z]+))?: ")
_REQUEST_FIELDS = {"obs": "observations"}
"""The model layer's argument names (in the messages it shares with the library) -> the request's field names."""


class RequestError(Exception):
    """A request the servicer refuses: carries the status code, the message and the error reason."""

    def __init__(self, code: grpc.StatusCode, message: str, error_reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.error_reason = error_reason


def truncate(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def client_message(text: str) -> str:
    """``text`` as a client may read it: one line, no ANSI escapes or control characters, torch's
    weights_only advice replaced by what happened, at most `MAX_MESSAGE_CHARS` characters."""
    text = _TORCH_ADVICE.sub(
        "torch's weights_only loading refused the file (nothing in it was run)", without_ansi(text)
    )
    return truncate(_CONTROL.sub(" ", text).strip())


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """``(code, message, error_reason)`` for an exception raised while serving a request."""
    if isinstance(exc, RequestError):
        found = (exc.code, exc.message, exc.error_reason)
    elif isinstance(exc, InvalidInputError):  # the model layer's input rules, and the tensor codec's
        found = (SC.INVALID_ARGUMENT, str(exc), exc.reason)
    elif isinstance(exc, UnknownModelError):
        found = (SC.NOT_FOUND, str(exc), "UNKNOWN_MODEL")
    elif isinstance(exc, UnknownVersionError):
        found = (SC.NOT_FOUND, str(exc), "UNKNOWN_VERSION")
    elif isinstance(exc, ModelLoadError):
        found = (SC.FAILED_PRECONDITION, str(exc), "MODEL_NOT_SERVABLE")
    elif isinstance(exc, ExportUnavailableError):
        found = (SC.FAILED_PRECONDITION, str(exc), "EXPORT_UNAVAILABLE")
    elif isinstance(exc, BadChunkSizeError):
        found = (SC.INVALID_ARGUMENT, str(exc), "BAD_ARGUMENT")
    elif isinstance(exc, UnstartedLimitError):
        found = (SC.RESOURCE_EXHAUSTED, str(exc), "UNSTARTED_LIMIT")
    elif isinstance(exc, SessionLimitError):
        found = (SC.RESOURCE_EXHAUSTED, str(exc), "SESSION_LIMIT")
    elif isinstance(exc, SlotLimitError):
        found = (SC.RESOURCE_EXHAUSTED, str(exc), "SLOT_LIMIT")
    elif isinstance(exc, EnvLimitError):
        found = (SC.INVALID_ARGUMENT, str(exc), "ENV_LIMIT")
    elif isinstance(exc, StepLimitError):
        found = (SC.OUT_OF_RANGE, str(exc), "STEP_LIMIT")
    elif isinstance(exc, WatcherLimitError):
        found = (SC.RESOURCE_EXHAUSTED, str(exc), "WATCHER_LIMIT")
    elif isinstance(exc, InflightBudgetError):
        found = (SC.RESOURCE_EXHAUSTED, str(exc), "INFLIGHT_BUDGET")
    else:
        log.error("internal error while serving a request", exc_info=exc)
        found = (SC.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "INTERNAL")
    code, message, reason = found
    return code, client_message(message), reason


def _request_field(message: str) -> str | None:
    """The request field a message starts with: ``obs: ...`` -> ``observations``, ``hidden h: ...`` -> ``hidden.h``."""
    found = _FIELD.match(message)
    if found is None:
        return None
    name = _REQUEST_FIELDS.get(found[1], found[1])
    return f"{name}.{found[2]}" if found[2] else name


def rich_status(code: grpc.StatusCode, message: str, error_reason: str) -> grpc.Status:
    """The status with its details the standard way (``grpc-status-details-bin``): a ``google.rpc.ErrorInfo``
    (reason, domain ``hamlet.v1``), and for INVALID_ARGUMENT a ``google.rpc.BadRequest`` naming the field
    when the message starts with one (``obs: expected ...`` names ``observations``)."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if error_reason:
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=error_reason, domain=ERROR_DOMAIN))
    field = _request_field(message)
    if code is SC.INVALID_ARGUMENT and field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    result: grpc.Status = rpc_status.to_status(status)
    return result
