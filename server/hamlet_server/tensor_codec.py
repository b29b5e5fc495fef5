"""Tensors <-> `hamlet.v1.Tensor` (shape + dtype + raw little-endian bytes), with validation.

Pure functions. Decoding checks everything a request can get wrong (dtype, rank, width, byte length,
NaN/Inf, an all-false action-mask row) and raises `InvalidTensorError` with a message that says what was
expected and what came. No pickle: the bytes are read with `numpy.frombuffer` and copied once into torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hamlet_client.proto import tensor_pb2
from townlet.inference.validation import all_finite

__all__ = [
    "InvalidTensorError",
    "decode_action_mask",
    "decode_hidden",
    "decode_observations",
    "decode_tensor",
    "encode_hidden",
    "encode_tensor",
]

_NP_BY_DTYPE: dict[int, np.dtype[Any]] = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("?"),
}
_DTYPE_BY_TORCH = {
    torch.float32: tensor_pb2.DATA_TYPE_FLOAT32,
    torch.int64: tensor_pb2.DATA_TYPE_INT64,
    torch.bool: tensor_pb2.DATA_TYPE_BOOL,
}


class InvalidTensorError(ValueError):
    """A tensor in a request does not fit: the message names the field, what was expected and what came;
    ``reason`` is the stable error reason sent to clients (``BAD_TENSOR``, ``OBS_WIDTH_MISMATCH``)."""

    def __init__(self, message: str, reason: str = "BAD_TENSOR") -> None:
        super().__init__(message)
        self.reason = reason


def _dtype_name(dtype: int) -> str:
    try:
        return str(tensor_pb2.DataType.Name(dtype))
    except ValueError:
        return f"unknown DataType {dtype}"


def decode_tensor(msg: tensor_pb2.Tensor, *, field: str, dtype: int) -> np.ndarray:
    """Decode `msg` as a numpy array of `dtype` (a DataType value), checking dtype and byte length.

    The result is a read-only view of the message's bytes; copy it before writing.
    """
    if msg.dtype != dtype:
        raise InvalidTensorError(
            f"{field}: expected dtype {_dtype_name(dtype)}, got {_dtype_name(msg.dtype)}"
            + (" (set Tensor.dtype)" if msg.dtype == tensor_pb2.DATA_TYPE_UNSPECIFIED else "")
        )
    shape = tuple(int(d) for d in msg.shape)
    if any(d < 0 for d in shape):
        raise InvalidTensorError(f"{field}: shape {list(shape)} has a negative dimension")
    np_dtype = _NP_BY_DTYPE[dtype]
    expected = math.prod(shape) * np_dtype.itemsize  # Python ints: no overflow on absurd shapes
    if len(msg.data) != expected:
        raise InvalidTensorError(
            f"{field}: shape {list(shape)} of {_dtype_name(dtype)} needs {expected} bytes, got {len(msg.data)}"
        )
    array: np.ndarray = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape)
    return array


def _check_finite(array: np.ndarray, field: str) -> None:
    if not all_finite(array):  # one cheap pass on the per-step path; the index is looked up only on failure
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        raise InvalidTensorError(f"{field}: expected finite values, got {array[tuple(bad)]} at index {bad}")


def decode_observations(msg: tensor_pb2.Tensor, *, obs_dim: int, batch: int | None = None) -> torch.Tensor:
    """Decode observations `[B, obs_dim]` float32 (B == `batch` when given, else >= 1) into a torch tensor."""
    array = decode_tensor(msg, field="observations", dtype=tensor_pb2.DATA_TYPE_FLOAT32)
    want_b = "B" if batch is None else str(batch)
    if array.ndim != 2:
        raise InvalidTensorError(
            f"observations: expected rank 2 [{want_b}, {obs_dim}], got shape {list(array.shape)}"
            + (" (wrap a single observation as a batch of one)" if array.ndim == 1 else "")
        )
    if array.shape[1] != obs_dim:
        raise InvalidTensorError(
            f"observations: expected width obs_dim={obs_dim}, got shape {list(array.shape)} "
            f"(is this observation for another model or level?)",
            "OBS_WIDTH_MISMATCH",
        )
    if array.shape[0] == 0:
        raise InvalidTensorError(f"observations: expected a non-empty batch [{want_b}, {obs_dim}], got 0 rows")
    if batch is not None and array.shape[0] != batch:
        raise InvalidTensorError(
            f"observations: expected [{batch}, {obs_dim}] (one row per environment), got {list(array.shape)}"
        )
    _check_finite(array, "observations")
    return torch.from_numpy(array.astype(np.float32))


def decode_action_mask(msg: tensor_pb2.Tensor | None, *, batch: int, action_dim: int) -> torch.Tensor | None:
    """Decode an action mask `[B, action_dim]` bool, or None when `msg` is absent (None or empty)."""
    if msg is None or (not msg.shape and not msg.data and msg.dtype == tensor_pb2.DATA_TYPE_UNSPECIFIED):
        return None
    array = decode_tensor(msg, field="action_mask", dtype=tensor_pb2.DATA_TYPE_BOOL)
    if array.shape != (batch, action_dim):
        raise InvalidTensorError(f"action_mask: expected shape [{batch}, {action_dim}], got {list(array.shape)}")
    empty_rows = np.flatnonzero(~array.any(axis=1))
    if empty_rows.size:
        raise InvalidTensorError(
            f"action_mask: row {int(empty_rows[0])} allows no action; every row needs at least one true entry"
        )
    return torch.from_numpy(array.astype(np.bool_))


def decode_hidden(
    h_msg: tensor_pb2.Tensor, c_msg: tensor_pb2.Tensor, *, batch: int, hidden_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an LSTM state (h, c), each `[1, B, hidden_dim]` float32."""
    out = []
    for name, msg in (("hidden.h", h_msg), ("hidden.c", c_msg)):
        array = decode_tensor(msg, field=name, dtype=tensor_pb2.DATA_TYPE_FLOAT32)
        if array.shape != (1, batch, hidden_dim):
            raise InvalidTensorError(
                f"{name}: expected shape [1, {batch}, {hidden_dim}] (layers, batch, hidden), got {list(array.shape)}"
            )
        _check_finite(array, name)
        out.append(torch.from_numpy(array.astype(np.float32)))
    return out[0], out[1]


_F32_LE = np.dtype("<f4")


def encode_tensor(tensor: torch.Tensor | np.ndarray, out: tensor_pb2.Tensor | None = None) -> tensor_pb2.Tensor:
    """Encode a CPU/GPU torch tensor or numpy array (float32, int64 or bool) into `out` (or a new Tensor)."""
    if isinstance(tensor, np.ndarray) and tensor.dtype == _F32_LE:  # the per-step path: Q-values
        msg = out if out is not None else tensor_pb2.Tensor()
        msg.shape[:] = tensor.shape
        msg.dtype = tensor_pb2.DATA_TYPE_FLOAT32
        msg.data = tensor.tobytes()  # C order whatever the strides
        return msg
    if isinstance(tensor, torch.Tensor):
        if tensor.dtype not in _DTYPE_BY_TORCH:
            raise TypeError(f"cannot encode torch dtype {tensor.dtype}; expected float32, int64 or bool")
        dtype = _DTYPE_BY_TORCH[tensor.dtype]
        array = tensor.detach().cpu().contiguous().numpy()
    else:
        array = np.ascontiguousarray(tensor)
        matches = [k for k, v in _NP_BY_DTYPE.items() if v == array.dtype.newbyteorder("<")]
        if not matches:
            raise TypeError(f"cannot encode numpy dtype {array.dtype}; expected float32, int64 or bool")
        dtype = tensor_pb2.DataType.ValueType(matches[0])
        array = array.astype(_NP_BY_DTYPE[dtype], copy=False)
    msg = out if out is not None else tensor_pb2.Tensor()
    msg.shape[:] = list(array.shape)
    msg.dtype = dtype
    msg.data = array.astype(_NP_BY_DTYPE[dtype], copy=False).tobytes()
    return msg


def encode_hidden(hidden: Sequence[torch.Tensor], out: tensor_pb2.HiddenState | None = None) -> tensor_pb2.HiddenState:
    """Encode an LSTM state (h, c) into `out` (or a new HiddenState)."""
    msg = out if out is not None else tensor_pb2.HiddenState()
    encode_tensor(hidden[0], msg.h)
    encode_tensor(hidden[1], msg.c)
    return msg
