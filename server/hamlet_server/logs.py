"""The server's log lines: text for people, JSON for log pipelines, both carrying the call's context.

    configure_logging("INFO", "json")             # once, in the CLI
    bind_log_context(session="s-1a2b", peer=...)  # in an RPC handler: every line it logs after carries it

A handler binds what it knows (stream/session id, model, version, peer) in a `contextvars.ContextVar`; each
gRPC call runs in its own asyncio task with its own copy of the context, so the fields never leak into another
call's lines. `--log-format json` writes one object a line:

    {"time": "2026-12-05T08:41:07.123Z", "level": "INFO", "logger": "hamlet_server.servicer",
     "message": "stream s-1a2b ended: client_closed (OK) ", "session": "s-1a2b", "model": "townlet-L2-lstm",
     "version": 1175, "peer": "ipv4:127.0.0.1:50122"}

Text lines end with the same fields as ``[session=s-1a2b model=townlet-L2-lstm v1175 peer=...]``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

__all__ = ["LOG_FORMATS", "ContextFilter", "JsonFormatter", "bind_log_context", "configure_logging", "log_context"]

LOG_FORMATS = ("text", "json")
_FIELDS = ("session", "model", "version", "peer")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("hamlet_log_context", default=None)


def bind_log_context(**fields: Any) -> None:
    """Add ``fields`` (session, model, version, peer) to this task's log context; None values are skipped."""
    merged = dict(_context.get() or {})
    merged.update({key: value for key, value in fields.items() if value is not None})
    _context.set(merged)


def log_context() -> dict[str, Any]:
    """The fields bound in the current task (a copy)."""
    return dict(_context.get() or {})


class ContextFilter(logging.Filter):
    """Puts the bound fields on each record (`record.hamlet_context`, a dict) and a text suffix
    (`record.context_suffix`, empty when nothing is bound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get() or {}
        record.hamlet_context = fields
        record.context_suffix = _suffix(fields)
        return True


def _suffix(fields: dict[str, Any]) -> str:
    if not fields:
        return ""
    parts = []
    for key in _FIELDS:
        if key not in fields:
            continue
        parts.append(f"v{fields[key]}" if key == "version" else f"{key}={fields[key]}")
    return " [" + " ".join(parts) + "]"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601, ms), level, logger, message, the bound fields, process
    id, and the traceback as ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update(getattr(record, "hamlet_context", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str = "text", *, show_pid: bool = False) -> None:
    """Route the root logger to stderr in ``log_format`` (text or json) at ``level``; replaces handlers that
    an earlier call installed."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        pid = "[pid %(process)d] " if show_pid else ""  # --workers: which process said it
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {pid}%(levelname)s %(name)s: %(message)s%(context_suffix)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
