"""The input rules of ``predict()``, shared by `HamletModel` (torch) and `OnnxModel` (numpy, torch-free).

Each function checks one fact that the caller reads off its own array type (a shape, a dtype, the rows
that failed) and raises `InvalidInputError` saying what was expected and what came, so both predictors
give the same message for the same mistake.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from townlet.inference.errors import InvalidInputError

__all__ = [
    "ONNX_ATOL",
    "ONNX_RTOL",
    "all_finite",
    "check_epsilon",
    "check_hidden_pair",
    "check_hidden_part",
    "check_mask",
    "check_obs",
    "reject_reset_tuple",
    "reject_rows",
]


ONNX_ATOL = 1e-5
"""How far an ONNX export may be from PyTorch, absolute part: the Hamlet spec's 1e-5 (matters near Q = 0)."""
ONNX_RTOL = 1e-5
"""Relative part (~80 float32 ULPs of |torch|): an element passes when |onnx - torch| <= atol + rtol * |torch|."""


def all_finite(values: np.ndarray) -> bool:
    """Whether every element is finite, in one cheap pass when it is: NaN and Inf propagate through a sum,
    so only a non-finite sum (bad values, or huge finite ones that overflow) pays for the element-wise check."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(values.sum()):
            return True
    return bool(np.isfinite(values).all())


def reject_reset_tuple(obs: Any) -> None:
    """The commonest slip: passing ``env.reset()``'s ``(obs, info)`` pair."""
    if isinstance(obs, tuple) and len(obs) == 2 and isinstance(obs[1], dict):
        raise InvalidInputError("obs looks like an (observation, info) tuple from env.reset(); pass obs[0]")


def check_obs(shape: Sequence[int], is_float: bool, dtype: object, obs_dim: int) -> None:
    """``obs`` must be floats shaped ``[B, obs_dim]`` with B >= 1 (after a 1-D input was made a batch of one)."""
    if not is_float:
        raise InvalidInputError(f"obs: expected a float array, got dtype {dtype}")
    if len(shape) != 2 or shape[1] != obs_dim:
        raise InvalidInputError(f"obs: expected shape [{obs_dim}] or [B, {obs_dim}], got {list(shape)}")
    if shape[0] == 0:
        raise InvalidInputError("obs: empty batch (B = 0); send at least one observation")


def check_hidden_pair(hidden: Any, expected: Sequence[int], model_has_hidden: bool) -> bool:
    """Whether ``hidden`` must be checked part by part: False for None on a recurrent model (use zeros)."""
    if not model_has_hidden:
        if hidden is not None:
            raise InvalidInputError("hidden: this feed-forward (simple) model takes no hidden state; pass None")
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
        raise InvalidInputError(f"hidden {name}: expected shape {list(expected)}, got {list(shape)}")
    if not is_float:
        raise InvalidInputError(f"hidden {name}: expected float values, got dtype {dtype}")


def check_mask(shape: Sequence[int], is_bool: bool, dtype: object, batch: int, action_dim: int) -> None:
    """``action_mask`` must be bool shaped ``[B, A]`` (after a 1-D mask was made a batch of one)."""
    if not is_bool:
        raise InvalidInputError(f"action_mask: expected dtype bool, got {dtype}")
    if list(shape) != [batch, action_dim]:
        raise InvalidInputError(f"action_mask: expected shape [{batch}, {action_dim}], got {list(shape)}")


def reject_rows(name: str, rows: Sequence[int]) -> None:
    """Raise for rows that broke a per-row rule: non-finite values, or a mask row allowing nothing."""
    if not rows:
        return
    if name == "action_mask":
        raise InvalidInputError(f"action_mask: row(s) {list(rows[:10])} allow no action; each row needs one True")
    raise InvalidInputError(f"{name}: expected finite values, got NaN or Inf in row(s) {list(rows[:10])}")


def check_epsilon(epsilon: Any, name: str = "epsilon") -> float:
    """A real number in [0, 1] (not a bool, not NaN); ``name`` is the field named in the message."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not 0.0 <= float(epsilon) <= 1.0:
        raise InvalidInputError(f"{name}: expected a number in [0, 1], got {epsilon!r}")
    return float(epsilon)
