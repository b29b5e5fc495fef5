"""Tensors <-> `hamlet.v1.Tensor` (shape + dtype + raw little-endian bytes), with validation.

Pure functions. Decoding checks what only the wire can get wrong (an unset or unknown dtype, a negative
dimension, a byte length that does not fit the shape), then hands the numpy array to the model layer's
rules (`townlet.inference.validation`: dtype, shape, width, NaN/Inf, an all-false action-mask row), so a
request gets the message `HamletModel.predict` gives for the same mistake. Every error is an
`InvalidInputError` whose ``reason`` is the stable error reason sent to clients. No pickle: the bytes are
read with `numpy.frombuffer` and copied once into a writable numpy array; the backend converts a whole batch
to its own array kind (`hamlet_server.array_ops`). numpy only: torch tensors are encoded without importing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hamlet_client.proto import tensor_pb2
from townlet.inference import validation
from townlet.inference.errors import InvalidInputError

__all__ = [
    "InvalidTensorError",
    "decode_action_mask",
    "decode_hidden",
    "decode_observations",
    "decode_tensor",
    "encode_hidden",
    "encode_tensor",
]

_NP_BY_DTYPE: dict[tensor_pb2.DataType, np.dtype[Any]] = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("?"),
}


class InvalidTensorError(InvalidInputError):
    """A tensor's bytes do not make an array (unset dtype, byte length): the wire's own rule, reason BAD_TENSOR."""

    def __init__(self, message: str, reason: str = "BAD_TENSOR") -> None:
        super().__init__(message, reason)


def _dtype_name(dtype: int) -> str:
    try:
        return str(tensor_pb2.DataType.Name(dtype))
    except ValueError:
        return f"unknown DataType {dtype}"


def decode_tensor(msg: tensor_pb2.Tensor, *, field: str) -> np.ndarray:
    """Decode `msg` as a numpy array of its own dtype, checking that the dtype is set and the bytes fit the shape.

    The result is a read-only view of the message's bytes; copy it before writing.
    """
    np_dtype = _NP_BY_DTYPE.get(msg.dtype)
    if np_dtype is None:
        known = [_dtype_name(d) for d in _NP_BY_DTYPE]
        raise InvalidTensorError(
            f"{field}: expected a Tensor.dtype of {known}, got {_dtype_name(msg.dtype)}"
            + (" (set Tensor.dtype)" if msg.dtype == tensor_pb2.DATA_TYPE_UNSPECIFIED else "")
        )
    shape = tuple(int(d) for d in msg.shape)
    if any(d < 0 for d in shape):
        raise InvalidTensorError(f"{field}: shape {list(shape)} has a negative dimension")
    expected = math.prod(shape) * np_dtype.itemsize  # Python ints: no overflow on absurd shapes
    if len(msg.data) != expected:
        raise InvalidTensorError(
            f"{field}: shape {list(shape)} of {_dtype_name(msg.dtype)} needs {expected} bytes, got {len(msg.data)}"
        )
    array: np.ndarray = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape)
    return array


def decode_observations(msg: tensor_pb2.Tensor, *, obs_dim: int, batch: int | None = None) -> np.ndarray:
    """Decode observations ``[B, obs_dim]`` (or ``[obs_dim]``, a batch of one) float32 into a numpy array;
    B must equal `batch` when given (a stream's one row per environment)."""
    array = validation.obs_array(decode_tensor(msg, field="obs"), obs_dim)
    if batch is not None and array.shape[0] != batch:
        raise InvalidTensorError(
            f"obs: expected [{batch}, {obs_dim}] (one row per environment), got {list(array.shape)}"
        )
    return array.copy()  # the message's bytes are read-only


def decode_action_mask(msg: tensor_pb2.Tensor | None, *, batch: int, action_dim: int) -> np.ndarray | None:
    """Decode an action mask ``[B, action_dim]`` bool, or None when `msg` is absent (None or empty)."""
    if msg is None or (not msg.shape and not msg.data and msg.dtype == tensor_pb2.DATA_TYPE_UNSPECIFIED):
        return None
    mask = validation.mask_array(decode_tensor(msg, field="action_mask"), batch, action_dim)
    return None if mask is None else mask.copy()


def decode_hidden(
    h_msg: tensor_pb2.Tensor, c_msg: tensor_pb2.Tensor, *, batch: int, hidden_dim: int | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode an LSTM state (h, c), each ``[1, B, hidden_dim]`` float32 (never None: that is the type of
    `validation.hidden_arrays`); `hidden_dim` None: the model is feed-forward, and the state is refused."""
    pair = (decode_tensor(h_msg, field="hidden h"), decode_tensor(c_msg, field="hidden c"))
    checked = validation.hidden_arrays(pair, batch, hidden_dim)
    return None if checked is None else (checked[0].copy(), checked[1].copy())


_F32_LE = np.dtype("<f4")


def encode_tensor(tensor: Any, out: tensor_pb2.Tensor | None = None) -> tensor_pb2.Tensor:
    """Encode a CPU/GPU torch tensor or numpy array (float32, int64 or bool) into `out` (or a new Tensor)."""
    if isinstance(tensor, np.ndarray) and tensor.dtype == _F32_LE:  # the per-step path: Q-values
        msg = out if out is not None else tensor_pb2.Tensor()
        msg.shape[:] = tensor.shape
        msg.dtype = tensor_pb2.DATA_TYPE_FLOAT32
        msg.data = tensor.tobytes()  # C order whatever the strides
        return msg
    kind = "numpy"
    if not isinstance(tensor, np.ndarray) and hasattr(tensor, "detach"):  # a torch tensor, on any device
        kind, tensor = "torch", tensor.detach().cpu().contiguous().numpy()
    array = np.ascontiguousarray(tensor)
    matches = [k for k, v in _NP_BY_DTYPE.items() if v == array.dtype.newbyteorder("<")]
    if not matches:
        raise TypeError(f"cannot encode {kind} dtype {array.dtype}; expected float32, int64 or bool")
    dtype = matches[0]
    msg = out if out is not None else tensor_pb2.Tensor()
    msg.shape[:] = list(array.shape)
    msg.dtype = dtype
    msg.data = array.astype(_NP_BY_DTYPE[dtype], copy=False).tobytes()
    return msg


def encode_hidden(hidden: Sequence[Any], out: tensor_pb2.HiddenState | None = None) -> tensor_pb2.HiddenState:
    """Encode an LSTM state (h, c) into `out` (or a new HiddenState)."""
    msg = out if out is not None else tensor_pb2.HiddenState()
    encode_tensor(hidden[0], msg.h)
    encode_tensor(hidden[1], msg.c)
    return msg
