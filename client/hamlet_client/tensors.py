"""numpy <-> `hamlet.v1.Tensor` (shape + dtype + raw little-endian row-major bytes), for the client.

Pure functions, no torch. Encoding validates what the client can know without the model (rank, dtype,
finite values, batch agreement) and raises `InvalidArgumentError` with what was expected and what came;
the server checks the rest (observation width, action count). Decoding checks that the bytes fit the
shape and returns read-only arrays that share the message's buffer (copy before writing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hamlet_client.errors import InternalError, InvalidArgumentError
from hamlet_client.proto import tensor_pb2

__all__ = [
    "Hidden",
    "decode_hidden",
    "decode_tensor",
    "encode_action_mask",
    "encode_hidden",
    "encode_observations",
    "encode_reset",
    "encode_tensor",
    "to_observation_batch",
]

Hidden = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
"""LSTM state ``(h, c)``, each ``[1, B, hidden_dim]`` float32."""

_F32 = np.dtype("<f4")
_I64 = np.dtype("<i8")
_BOOL = np.dtype("?")
_NP_BY_DTYPE: dict[int, np.dtype[Any]] = {
    tensor_pb2.DATA_TYPE_FLOAT32: _F32,
    tensor_pb2.DATA_TYPE_INT64: _I64,
    tensor_pb2.DATA_TYPE_BOOL: _BOOL,
}


def encode_tensor(array: npt.ArrayLike) -> tensor_pb2.Tensor:
    """Encode a float32, int64 or bool array (other floats become float32, other ints int64)."""
    arr = np.asarray(array)
    wire: np.dtype[Any]
    if arr.dtype.kind == "f":
        code, wire = tensor_pb2.DATA_TYPE_FLOAT32, _F32
    elif arr.dtype.kind in "iu":
        code, wire = tensor_pb2.DATA_TYPE_INT64, _I64
    elif arr.dtype.kind == "b":
        code, wire = tensor_pb2.DATA_TYPE_BOOL, _BOOL
    else:
        raise InvalidArgumentError(f"cannot encode dtype {arr.dtype}; expected a float, integer or bool array")
    data = np.ascontiguousarray(arr, dtype=wire).tobytes()
    return tensor_pb2.Tensor(shape=arr.shape, dtype=code, data=data)


def decode_tensor(msg: tensor_pb2.Tensor) -> npt.NDArray[Any]:
    """Decode a Tensor into a read-only numpy array of its dtype, checking that the bytes fit the shape."""
    wire = _NP_BY_DTYPE.get(msg.dtype)
    if wire is None:
        raise InternalError(f"server sent a tensor of unsupported dtype {msg.dtype}")
    shape = tuple(msg.shape)
    count = 1
    for dim in shape:
        count *= dim
    if count < 0 or len(msg.data) != count * wire.itemsize:
        raise InternalError(f"server sent a tensor of shape {list(shape)} with {len(msg.data)} bytes")
    return np.frombuffer(msg.data, dtype=wire).reshape(shape)


def to_observation_batch(obs: Any, *, field: str = "obs", check_finite: bool = True) -> npt.NDArray[np.float32]:
    """A list or array of one observation ``[obs_dim]`` or a batch ``[B, obs_dim]`` -> ``[B, obs_dim]`` float32.

    ``check_finite=False`` skips the NaN/Inf scan (the server checks too; a scan costs ~10 us per call).

    Raises:
        InvalidArgumentError: ragged or non-numeric input, wrong rank, an empty batch, or NaN/Inf.
    """
    if isinstance(obs, tuple) and len(obs) == 2 and isinstance(obs[1], dict):
        raise InvalidArgumentError(f"{field}: looks like an (observation, info) tuple from env.reset(); pass obs[0]")
    try:
        arr = np.asarray(obs, dtype=_F32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"{field}: expected a list or array of floats, got {type(obs).__name__}: {exc}"
        ) from None
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    elif arr.ndim != 2:
        raise InvalidArgumentError(
            f"{field}: expected one observation [obs_dim] or a batch [B, obs_dim], got shape {list(arr.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidArgumentError(f"{field}: expected a non-empty [B, obs_dim] batch, got shape {list(arr.shape)}")
    if check_finite and not np.isfinite(arr).all():
        rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))[:10].tolist()
        raise InvalidArgumentError(f"{field}: expected finite values, got NaN or Inf in row(s) {rows}")
    return arr


def encode_observations(obs: Any, *, field: str = "obs", check_finite: bool = True) -> tuple[tensor_pb2.Tensor, int]:
    """Encode observations (see `to_observation_batch`) -> (Tensor ``[B, obs_dim]`` float32, B)."""
    arr = to_observation_batch(obs, field=field, check_finite=check_finite)
    msg = tensor_pb2.Tensor(shape=arr.shape, dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=arr.tobytes())
    return msg, arr.shape[0]


def encode_action_mask(mask: Any, *, batch: int) -> tensor_pb2.Tensor:
    """Encode an action mask ``[A]`` (one sample) or ``[B, A]`` bool, true where an action is allowed."""
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise InvalidArgumentError(f"action_mask: expected a bool array (True = allowed), got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[0] != batch:
        raise InvalidArgumentError(f"action_mask: expected shape [{batch}, action_dim], got {list(arr.shape)}")
    empty = np.flatnonzero(~arr.any(axis=1))
    if empty.size:
        raise InvalidArgumentError(f"action_mask: row(s) {empty[:10].tolist()} allow no action; each needs one True")
    return tensor_pb2.Tensor(shape=arr.shape, dtype=tensor_pb2.DATA_TYPE_BOOL, data=arr.tobytes())


def encode_hidden(hidden: Sequence[Any], *, batch: int) -> tensor_pb2.HiddenState:
    """Encode an LSTM state ``(h, c)``, each ``[1, B, hidden_dim]`` (floats), as a HiddenState."""
    if isinstance(hidden, (str, bytes)) or len(hidden) != 2:
        raise InvalidArgumentError(
            f"hidden: expected a pair (h, c) of arrays shaped [1, {batch}, hidden_dim], got {type(hidden).__name__}"
        )
    parts = []
    for name, part in zip("hc", hidden, strict=True):
        try:
            arr = np.asarray(part, dtype=_F32)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"hidden {name}: expected an array of floats: {exc}") from None
        if arr.ndim != 3 or arr.shape[:2] != (1, batch):
            raise InvalidArgumentError(
                f"hidden {name}: expected shape [1, {batch}, hidden_dim] (layers, batch, hidden), got {list(arr.shape)}"
            )
        if not np.isfinite(arr).all():
            raise InvalidArgumentError(f"hidden {name}: expected finite values, got NaN or Inf")
        parts.append(tensor_pb2.Tensor(shape=arr.shape, dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=arr.tobytes()))
    if parts[0].shape != parts[1].shape:
        raise InvalidArgumentError(f"hidden: h {list(parts[0].shape)} and c {list(parts[1].shape)} differ in shape")
    return tensor_pb2.HiddenState(h=parts[0], c=parts[1])


def decode_hidden(msg: tensor_pb2.HiddenState) -> Hidden | None:
    """Decode a HiddenState into ``(h, c)`` float32 arrays, or None when the response carries none."""
    if not msg.h.shape and not msg.h.data:
        return None
    return decode_tensor(msg.h), decode_tensor(msg.c)


def encode_reset(reset: Any, *, num_envs: int) -> list[bool]:
    """A per-environment reset mask (a bool, a sequence of bools or None) -> ``num_envs`` bools (or [])."""
    if reset is None:
        return []
    if isinstance(reset, (bool, np.bool_)):
        return [bool(reset)] * num_envs
    arr = np.asarray(reset)
    if arr.dtype != np.bool_ or arr.shape != (num_envs,):
        raise InvalidArgumentError(
            f"reset: expected {num_envs} bools (one per environment), got dtype {arr.dtype} shape {list(arr.shape)}"
        )
    return arr.tolist()  # type: ignore[no-any-return]
