"""The input rules of ``predict()``: one function per fact, shared by every door a request comes in by.

`HamletModel` (torch), `OnnxModel` (numpy) and the gRPC server (`hamlet_server.tensor_codec`, which decodes a
request's tensors to numpy and hands them here) all raise the same `InvalidInputError`, with the same
message, for the same mistake. Each rule checks one fact that the caller reads off its own array type (a
shape, a dtype, the rows that failed) and says what was expected and what came; ``reason`` is the stable
name of the fact (``OBS_WIDTH_MISMATCH``, ``BAD_TENSOR``, ...) that the server sends as its error reason.
The ``*_array`` functions apply every rule of one argument to numpy input at once. Torch-free, grpc-free.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from townlet.inference.errors import InvalidInputError

__all__ = [
    "ONNX_ATOL",
    "ONNX_RTOL",
    "FloatArray",
    "NumpyHidden",
    "check_epsilon",
    "check_finite",
    "check_hidden_pair",
    "check_hidden_part",
    "check_mask",
    "check_obs",
    "hidden_arrays",
    "mask_array",
    "obs_array",
    "reject_empty_mask_rows",
    "reject_reset_tuple",
]


ONNX_ATOL = 1e-5
"""How far an ONNX export may be from PyTorch, absolute part: the Hamlet spec's 1e-5 (matters near Q = 0)."""
ONNX_RTOL = 1e-5
"""Relative part (~80 float32 ULPs of |torch|): an element passes when |onnx - torch| <= atol + rtol * |torch|."""

FloatArray = npt.NDArray[np.float32]
NumpyHidden = tuple[FloatArray, FloatArray]
"""LSTM state ``(h, c)``, each ``[1, B, H]`` float32 (batch on axis 1)."""

_FLOAT32 = np.dtype(np.float32)


# ---------------------------------------------------------------------------------------------- the rules


def reject_reset_tuple(obs: Any) -> None:
    """The commonest slip: passing ``env.reset()``'s ``(obs, info)`` pair."""
    if isinstance(obs, tuple) and len(obs) == 2 and isinstance(obs[1], dict):
        raise InvalidInputError("obs looks like an (observation, info) tuple from env.reset(); pass obs[0]")


def check_obs(shape: Sequence[int], is_float: bool, dtype: object, obs_dim: int) -> None:
    """``obs`` must be floats shaped ``[B, obs_dim]`` with B >= 1 (after a 1-D input was made a batch of one)."""
    if not is_float:
        raise InvalidInputError(f"obs: expected a float array, got dtype {dtype}", "BAD_TENSOR")
    if len(shape) != 2:
        raise InvalidInputError(f"obs: expected shape [{obs_dim}] or [B, {obs_dim}], got {list(shape)}", "BAD_TENSOR")
    if shape[1] != obs_dim:
        raise InvalidInputError(
            f"obs: expected shape [{obs_dim}] or [B, {obs_dim}], got {list(shape)} "
            "(an observation of another model or level?)",
            "OBS_WIDTH_MISMATCH",
        )
    if shape[0] == 0:
        raise InvalidInputError("obs: empty batch (B = 0); send at least one observation", "BAD_TENSOR")


def check_hidden_pair(hidden: Any, expected: Sequence[int], model_has_hidden: bool) -> bool:
    """Whether ``hidden`` must be checked part by part: False for None on a recurrent model (use zeros)."""
    if not model_has_hidden:
        if hidden is not None:
            raise InvalidInputError(
                "hidden: this feed-forward (simple) model takes no hidden state; leave hidden out (None)",
                "UNEXPECTED_HIDDEN",
            )
        return False
    if hidden is None:
        return False
    if not isinstance(hidden, (tuple, list)) or len(hidden) != 2:
        raise InvalidInputError(
            f"hidden: expected a pair (h, c) of arrays shaped {list(expected)}, got {type(hidden).__name__}"
        )
    return True


def check_hidden_part(name: str, shape: Sequence[int], is_float: bool, dtype: object, expected: Sequence[int]) -> None:
    """One of ``h`` / ``c``: floats shaped ``[1, B, H]``."""
    if list(shape) != list(expected):
        raise InvalidInputError(
            f"hidden {name}: expected shape {list(expected)} (layers, batch, hidden), got {list(shape)}", "BAD_TENSOR"
        )
    if not is_float:
        raise InvalidInputError(f"hidden {name}: expected float values, got dtype {dtype}", "BAD_TENSOR")


def check_mask(shape: Sequence[int], is_bool: bool, dtype: object, batch: int, action_dim: int) -> None:
    """``action_mask`` must be bool shaped ``[B, A]`` (after a 1-D mask was made a batch of one)."""
    if not is_bool:
        raise InvalidInputError(f"action_mask: expected dtype bool, got {dtype}", "BAD_TENSOR")
    if list(shape) != [batch, action_dim]:
        raise InvalidInputError(f"action_mask: expected shape [{batch}, {action_dim}], got {list(shape)}", "BAD_TENSOR")


def reject_empty_mask_rows(rows: Sequence[int]) -> None:
    """Raise for the rows of an action mask that allow no action."""
    if rows:
        raise InvalidInputError(
            f"action_mask: row(s) {list(rows[:10])} allow no action; each row needs one True", "BAD_TENSOR"
        )


def check_finite(name: str, values: Any) -> None:
    """Raise unless every element of ``values [B, ...]`` (a numpy array or a torch tensor, on any device) is
    finite, naming the rows that are not. numpy: one ``isfinite`` pass. torch: a finite sum proves it in one
    kernel (NaN and Inf propagate through a sum); only a non-finite sum pays for the element-wise look, which
    finds no row when the sum merely overflowed (huge but finite values). The look uses operators that work
    alike on numpy and torch."""
    if isinstance(values, np.ndarray):
        if np.isfinite(values).all():
            return
    elif math.isfinite(float(values.sum())):
        return
    bad = (values != values) | (abs(values) == math.inf)  # NaN, or +-Inf
    rows = [row for row, any_bad in enumerate(bad.reshape(len(values), -1).any(1).tolist()) if any_bad]
    if rows:
        raise InvalidInputError(f"{name}: expected finite values, got NaN or Inf in row(s) {rows[:10]}", "BAD_TENSOR")


def check_epsilon(epsilon: Any, name: str = "epsilon") -> float:
    """A real number in [0, 1] (not a bool, not NaN); ``name`` is the field named in the message."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not 0.0 <= float(epsilon) <= 1.0:
        raise InvalidInputError(f"{name}: expected a number in [0, 1], got {epsilon!r}", "BAD_EPSILON")
    return float(epsilon)


# ------------------------------------------------------------------------------ every rule of one argument


def obs_array(obs: Any, obs_dim: int) -> FloatArray:
    """``obs`` (``[obs_dim]`` or ``[B, obs_dim]`` floats, any array-like) as a C-contiguous float32 ``[B, obs_dim]``
    array; one already in that form is returned as is (only its values are checked)."""
    if not _is_float32_matrix(obs, obs_dim):
        reject_reset_tuple(obs)
        try:
            arr = np.asarray(obs)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"obs: expected an array of floats, got {type(obs).__name__}: {exc}") from None
        if arr.ndim == 1:
            arr = arr[None, :]
        check_obs(arr.shape, np.issubdtype(arr.dtype, np.floating), arr.dtype, obs_dim)
        obs = np.ascontiguousarray(arr, dtype=np.float32)
    check_finite("obs", obs)
    return obs  # type: ignore[no-any-return]


def hidden_arrays(hidden: Any, batch: int, hidden_dim: int | None) -> NumpyHidden | None:
    """``(h, c)`` as C-contiguous float32 arrays ``[1, B, hidden_dim]``; None where zeros are meant (a recurrent
    model given None) or where there is no state (``hidden_dim`` None: a feed-forward model, given None)."""
    expected = [1, batch, hidden_dim or 0]
    if hidden_dim is not None and type(hidden) is tuple and len(hidden) == 2:
        h, c = hidden
        shape = (1, batch, hidden_dim)
        if _is_float32_state(h, shape) and _is_float32_state(c, shape):  # the state a previous call returned
            check_finite("hidden h", h.reshape(batch, -1))
            check_finite("hidden c", c.reshape(batch, -1))
            return h, c
    if not check_hidden_pair(hidden, expected, hidden_dim is not None):
        return None
    checked = []
    for name, part in zip("hc", hidden, strict=True):
        arr = np.asarray(part)
        check_hidden_part(name, arr.shape, np.issubdtype(arr.dtype, np.floating), arr.dtype, expected)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        check_finite(f"hidden {name}", arr.reshape(batch, -1))
        checked.append(arr)
    return checked[0], checked[1]


def mask_array(mask: Any, batch: int, action_dim: int) -> npt.NDArray[np.bool_] | None:
    """``action_mask`` as a bool array ``[B, action_dim]`` in which every row allows an action; None for None."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.ndim == 1:
        arr = arr[None, :]
    check_mask(arr.shape, arr.dtype == np.bool_, arr.dtype, batch, action_dim)
    reject_empty_mask_rows(np.flatnonzero(~arr.any(axis=1)).tolist())
    return arr


def _is_float32_matrix(obs: Any, obs_dim: int) -> bool:
    """Whether ``obs`` is a C-contiguous float32 numpy array ``[B >= 1, obs_dim]`` (the session's input as is)."""
    return (
        type(obs) is np.ndarray
        and obs.dtype == _FLOAT32
        and obs.ndim == 2
        and obs.shape[1] == obs_dim
        and obs.shape[0] > 0
        and obs.flags.c_contiguous
    )


def _is_float32_state(part: Any, shape: tuple[int, int, int]) -> bool:
    """Whether ``part`` is a C-contiguous float32 numpy array shaped ``[1, B, H]``."""
    return type(part) is np.ndarray and part.dtype == _FLOAT32 and part.shape == shape and part.flags.c_contiguous
