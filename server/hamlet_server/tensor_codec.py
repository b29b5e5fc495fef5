"""Tensors <-> `hamlet.v1.Tensor` (shape + dtype + raw little-endian bytes), with validation.

Pure functions. Decoding checks what only the wire can get wrong (a missing tensor, an unset or unknown
dtype, more than `MAX_RANK` dimensions, a negative dimension, a byte length that does not fit the shape)
before numpy sees the shape (numpy stops at 64 dimensions with a bare ValueError), then hands the numpy
array to the model layer's rules (`townlet.inference.validation`: dtype, shape, width, NaN/Inf, an
all-false action-mask row), so a request gets the message `HamletModel.predict` gives for the same
mistake. Every error is an `InvalidInputError` whose ``reason`` is the stable error reason sent to clients
and whose message starts with the field it is about. No pickle: the bytes are read with `numpy.frombuffer`
and copied once into a writable numpy array; the backend converts a whole batch to its own array kind
(`hamlet_server.array_ops`). numpy only: torch tensors are encoded without importing it.
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
    "MAX_RANK",
    "InvalidTensorError",
    "decode_action_mask",
    "decode_hidden",
    "decode_observations",
    "decode_tensor",
    "encode_hidden",
    "encode_tensor",
    "is_missing",
]

_NP_BY_DTYPE: dict[tensor_pb2.DataType, np.dtype[Any]] = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("?"),
}
MAX_RANK = 8
"""Most dimensions a request tensor may have. hamlet.v1's tensors have at most 3 (hidden ``[1, B, H]``); up to
8 the model layer's rules name the expected shape, beyond that the codec refuses before building an array."""
_F32_ONLY = (tensor_pb2.DATA_TYPE_FLOAT32,)
_BOOL_ONLY = (tensor_pb2.DATA_TYPE_BOOL,)
_NUMPY_MAX_BYTES = (
    2**63 - 1
)  # numpy refuses a shape whose non-zero dimensions multiply past this, even with no elements


class InvalidTensorError(InvalidInputError):
    """A tensor's bytes do not make an array (unset dtype, byte length): the wire's own rule, reason BAD_TENSOR."""

    def __init__(self, message: str, reason: str = "BAD_TENSOR") -> None:
        super().__init__(message, reason)


def _dtype_name(dtype: int) -> str:
    try:
        return str(tensor_pb2.DataType.Name(dtype))
    except ValueError:
        return f"unknown DataType {dtype}"


def _shape_text(shape: Sequence[int]) -> str:
    """A shape as sent, cut after `MAX_RANK` dimensions (a 10,000-dimension shape must not fill the message)."""
    shown = ", ".join(str(d) for d in shape[:MAX_RANK])
    return f"[{shown}, ... ({len(shape)} dimensions)]" if len(shape) > MAX_RANK else f"[{shown}]"


def is_missing(msg: tensor_pb2.Tensor | None) -> bool:
    """Whether a Tensor field was left out (None, or every field at its default: no shape, dtype or bytes)."""
    return msg is None or (not msg.shape and not msg.data and msg.dtype == tensor_pb2.DATA_TYPE_UNSPECIFIED)


def _check_dtype(msg: tensor_pb2.Tensor, field: str, dtypes: Sequence[int]) -> np.dtype[Any]:
    """The numpy dtype of a known Tensor.dtype; an unset or unknown one is refused naming `dtypes`, the ones
    this field takes. A known dtype of another kind (INT64 observations) is decoded: the model layer's rule
    refuses it with the message `HamletModel.predict` gives."""
    np_dtype = _NP_BY_DTYPE.get(msg.dtype)
    if np_dtype is None:
        expected = " or ".join(_dtype_name(d) for d in dtypes)
        raise InvalidTensorError(
            f"{field}: expected Tensor.dtype {expected}, got {_dtype_name(msg.dtype)}"
            + (" (set Tensor.dtype)" if msg.dtype == tensor_pb2.DATA_TYPE_UNSPECIFIED else "")
        )
    return np_dtype


def _check_shape(shape: tuple[int, ...], field: str, layout: str) -> None:
    """At most `MAX_RANK` dimensions, none negative."""
    if len(shape) > MAX_RANK:
        raise InvalidTensorError(
            f"{field}: expected shape {layout}, got {len(shape)} dimensions {_shape_text(shape)} "
            f"(at most {MAX_RANK} are read)"
        )
    if any(d < 0 for d in shape):
        raise InvalidTensorError(f"{field}: shape {list(shape)} has a negative dimension; expected {layout}")


def decode_tensor(
    msg: tensor_pb2.Tensor,
    *,
    field: str,
    dtypes: Sequence[int] = tuple(_NP_BY_DTYPE),
    layout: str = "a shape",
) -> np.ndarray:
    """Decode `msg` as a numpy array of its own dtype, checking the dtype, the rank and that the bytes fit the
    shape; `dtypes` and `layout` (``[B, 91]``) are what `field` takes, named in the messages.

    The result is a read-only view of the message's bytes; copy it before writing.
    """
    np_dtype = _check_dtype(msg, field, dtypes)
    shape = tuple(int(d) for d in msg.shape)
    _check_shape(shape, field, layout)
    expected = math.prod(shape) * np_dtype.itemsize  # Python ints: no overflow on absurd shapes
    if len(msg.data) != expected:
        raise InvalidTensorError(
            f"{field}: shape {_shape_text(shape)} of {_dtype_name(msg.dtype)} needs {expected} bytes, "
            f"got {len(msg.data)}"
        )
    if math.prod(d for d in shape if d) * np_dtype.itemsize > _NUMPY_MAX_BYTES:
        raise InvalidTensorError(f"{field}: shape {_shape_text(shape)} is too large to index; expected {layout}")
    array: np.ndarray = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape)
    return array


def _refuse_missing(msg: tensor_pb2.Tensor | None, field: str, layout: str, dtype: str) -> None:
    if is_missing(msg):
        raise InvalidTensorError(f"{field}: missing; send a Tensor of {dtype} shaped {layout}", "MISSING_FIELD")


def decode_observations(msg: tensor_pb2.Tensor, *, obs_dim: int, batch: int | None = None) -> np.ndarray:
    """Decode observations ``[B, obs_dim]`` (or ``[obs_dim]``, a batch of one) float32 into a numpy array;
    B must equal `batch` when given (a stream's one row per environment)."""
    layout = f"[B, {obs_dim}]"
    _refuse_missing(msg, "obs", layout, "float32")
    array = validation.obs_array(decode_tensor(msg, field="obs", dtypes=_F32_ONLY, layout=layout), obs_dim)
    if batch is not None and array.shape[0] != batch:
        raise InvalidTensorError(
            f"obs: expected [{batch}, {obs_dim}] (one row per environment), got {list(array.shape)}"
        )
    return array.copy()  # the message's bytes are read-only


def decode_action_mask(msg: tensor_pb2.Tensor | None, *, batch: int, action_dim: int) -> np.ndarray | None:
    """Decode an action mask ``[B, action_dim]`` bool, or None when `msg` is absent (None or empty)."""
    if msg is None or is_missing(msg):
        return None
    array = decode_tensor(msg, field="action_mask", dtypes=_BOOL_ONLY, layout=f"[{batch}, {action_dim}]")
    mask = validation.mask_array(array, batch, action_dim)
    return None if mask is None else mask.copy()


def decode_hidden(
    h_msg: tensor_pb2.Tensor, c_msg: tensor_pb2.Tensor, *, batch: int, hidden_dim: int | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode an LSTM state (h, c), each ``[1, B, hidden_dim]`` float32 (never None: that is the type of
    `validation.hidden_arrays`); `hidden_dim` None: the model is feed-forward, and the state is refused."""
    if hidden_dim is None:  # any state is refused (UNEXPECTED_HIDDEN), whatever it holds, as the library does
        validation.check_hidden_pair((h_msg, c_msg), [], model_has_hidden=False)
    layout = f"[1, {batch}, {hidden_dim}]"
    parts = []
    for name, part in (("hidden h", h_msg), ("hidden c", c_msg)):
        _refuse_missing(part, name, layout, "float32")
        parts.append(decode_tensor(part, field=name, dtypes=_F32_ONLY, layout=layout))
    checked = validation.hidden_arrays(tuple(parts), batch, hidden_dim)
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
