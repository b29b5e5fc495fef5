"""The model layer's errors: one small hierarchy, each class meaning one kind of failure.

At the gRPC boundary these map one-to-one onto status codes: `InvalidInputError` -> INVALID_ARGUMENT,
`CheckpointError` (and its subclasses) -> FAILED_PRECONDITION / INTERNAL when a hosted file is bad.
`BrainSpecError` is defined by `townlet.agent.errors` (brain specs belong to the agent layer, which imports
nothing of this one) and re-exported here: a ``ValueError``, the one error of the model layer that is not an
`InferenceError`; the loaders wrap it in a `CheckpointError` naming the file.
This module imports nothing heavy (no torch), so torch-free code such as the ONNX Runtime predictor uses it.
"""

from __future__ import annotations

import re
from pathlib import Path

from townlet.agent.errors import BrainSpecError

__all__ = [
    "BrainSpecError",
    "CheckpointError",
    "InferenceError",
    "InvalidInputError",
    "UnsafeCheckpointError",
    "first_line",
    "without_ansi",
]

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
"""An ANSI escape sequence (a colour or bold code such as ``ESC[1m``): CSI sequences and two-byte escapes."""


class InferenceError(Exception):
    """Base class of the errors raised by `townlet.inference` (all but `BrainSpecError`, a ValueError)."""


class InvalidInputError(InferenceError, ValueError):
    """An argument to `predict()` (or a similar call) does not fit the model: the message says what was
    expected and what came; ``reason`` names the fact (``OBS_WIDTH_MISMATCH``, ``BAD_TENSOR``, ``BAD_EPSILON``,
    ``UNEXPECTED_HIDDEN``, else ``BAD_ARGUMENT``): the error reason the server sends for it."""

    def __init__(self, message: str, reason: str = "BAD_ARGUMENT") -> None:
        super().__init__(message)
        self.reason = reason


class CheckpointError(InferenceError):
    """A checkpoint file cannot be turned into a model: truncated, corrupt, not a checkpoint, an unknown
    format version, or weights that do not match the network rebuilt from it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class UnsafeCheckpointError(CheckpointError):
    """The file needs arbitrary unpickling (it references Python globals beyond tensors and plain
    containers). Nothing in it has run. Load it only if you trust its origin, with ``trust_pickle=True``
    (CLI: ``--trust``)."""

    def __init__(self, path: str | Path, globals_needed: list[str]) -> None:
        self.globals_needed = list(globals_needed)
        listed = ", ".join(self.globals_needed) or "(unknown)"
        super().__init__(
            path,
            f"refusing to unpickle: the file references Python globals that weights_only loading does "
            f"not allow ({listed}). Nothing in it was run. If you trust this file, pass "
            f"trust_pickle=True (CLI: --trust).",
        )


def without_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (terminal colours and bold, which torch puts in its errors)."""
    return _ANSI.sub("", text)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (at most 300 characters, no ANSI escapes), else its type name: how a
    message of ours quotes a foreign library's error (torch, onnx, onnxruntime) without its multi-line dump."""
    lines = without_ansi(str(exc)).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
