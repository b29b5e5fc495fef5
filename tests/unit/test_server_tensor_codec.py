"""tensor_codec: exact round trips, and each validation error names expected vs got (the wire's own rules
here; the model layer's rules, shared with `HamletModel.predict`, in tests/integration/test_same_messages.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hamlet_client.proto import tensor_pb2
from hamlet_server.tensor_codec import (
    MAX_RANK,
    decode_action_mask,
    decode_hidden,
    decode_observations,
    decode_tensor,
    encode_hidden,
    encode_tensor,
)
from townlet.inference.errors import InvalidInputError

F32 = tensor_pb2.DATA_TYPE_FLOAT32


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
                  elements=st.floats(-1e6, 1e6, width=32)))  # fmt: skip
def test_observations_round_trip_bit_exactly(array):
    decoded = decode_observations(encode_tensor(array), obs_dim=array.shape[1])
    assert isinstance(decoded, np.ndarray) and decoded.dtype == np.float32  # numpy: no torch on the decode path
    assert decoded.flags.writeable and decoded.flags.c_contiguous  # a copy, not a view of the message's bytes
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool])
def test_torch_tensors_encode_as_little_endian_bytes(dtype):
    tensor = (torch.arange(6).reshape(2, 3) % 2).to(dtype)
    msg = encode_tensor(tensor)
    assert list(msg.shape) == [2, 3]
    np_dtype = {torch.float32: "<f4", torch.int64: "<i8", torch.bool: "?"}[dtype]
    assert msg.data == tensor.numpy().astype(np_dtype).tobytes()
    assert torch.equal(torch.from_numpy(decode_tensor(msg, field="x").copy()), tensor)


def test_hidden_round_trip():
    h, c = torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    msg = encode_hidden((h, c))
    dh, dc = decode_hidden(msg.h, msg.c, batch=3, hidden_dim=8)
    np.testing.assert_array_equal(dh, h.numpy())
    np.testing.assert_array_equal(dc, c.numpy())


def _obs(shape, dtype=F32, data=None):
    array = np.zeros(shape, np.float32)
    return tensor_pb2.Tensor(shape=list(shape), dtype=dtype, data=array.tobytes() if data is None else data)


@pytest.mark.parametrize(
    ("msg", "kwargs", "fragment", "reason"),
    [
        (_obs((2, 5)), {"obs_dim": 4}, "obs: expected shape [4] or [B, 4], got [2, 5]", "OBS_WIDTH_MISMATCH"),
        (_obs((2, 5), dtype=tensor_pb2.DATA_TYPE_INT64, data=np.zeros((2, 5), np.int64).tobytes()), {"obs_dim": 5},
         "obs: expected a float array, got dtype int64", "BAD_TENSOR"),
        (_obs((2, 5), dtype=tensor_pb2.DATA_TYPE_UNSPECIFIED), {"obs_dim": 5}, "(set Tensor.dtype)", "BAD_TENSOR"),
        (_obs((2, 5), data=b"\0" * 36), {"obs_dim": 5}, "needs 40 bytes, got 36", "BAD_TENSOR"),
        (_obs((0, 5)), {"obs_dim": 5}, "empty batch", "BAD_TENSOR"),
        (_obs((3, 5)), {"obs_dim": 5, "batch": 2}, "expected [2, 5] (one row per environment), got [3, 5]",
         "BAD_TENSOR"),
        (tensor_pb2.Tensor(shape=[1, 2], dtype=F32, data=np.array([[0, np.inf]], np.float32).tobytes()),
         {"obs_dim": 2}, "obs: expected finite values, got NaN or Inf in row(s) [0]", "BAD_TENSOR"),
        (tensor_pb2.Tensor(shape=[-1, 2], dtype=F32), {"obs_dim": 2}, "negative dimension", "BAD_TENSOR"),
        (tensor_pb2.Tensor(shape=[2**32, 2**32], dtype=F32), {"obs_dim": 2**32}, "needs 73786976294838206464 bytes",
         "BAD_TENSOR"),
    ],
)  # fmt: skip
def test_bad_observations_are_refused_with_a_clear_message(msg, kwargs, fragment, reason):
    with pytest.raises(InvalidInputError) as info:
        decode_observations(msg, **kwargs)
    assert fragment in str(info.value) and info.value.reason == reason


def test_one_observation_is_a_batch_of_one_as_in_the_library():
    assert decode_observations(_obs((5,)), obs_dim=5).shape == (1, 5)


def test_action_mask_absent_valid_and_invalid():
    assert decode_action_mask(None, batch=2, action_dim=3) is None
    assert decode_action_mask(tensor_pb2.Tensor(), batch=2, action_dim=3) is None
    good = np.array([[True, False, True], [False, False, True]])
    np.testing.assert_array_equal(decode_action_mask(encode_tensor(good), batch=2, action_dim=3), good)
    with pytest.raises(InvalidInputError, match=r"row\(s\) \[1\] allow no action"):
        decode_action_mask(encode_tensor(np.array([[True, False], [False, False]])), batch=2, action_dim=2)
    with pytest.raises(InvalidInputError, match=r"expected shape \[2, 3\], got \[2, 2\]"):
        decode_action_mask(encode_tensor(np.ones((2, 2), bool)), batch=2, action_dim=3)


def test_hidden_shape_is_checked_and_a_feed_forward_model_takes_none():
    bad = encode_tensor(torch.zeros(1, 2, 7))
    with pytest.raises(InvalidInputError, match=r"hidden h: expected shape \[1, 2, 8\]"):
        decode_hidden(bad, bad, batch=2, hidden_dim=8)
    with pytest.raises(InvalidInputError, match="takes no hidden state") as info:
        decode_hidden(bad, bad, batch=2, hidden_dim=None)
    assert info.value.reason == "UNEXPECTED_HIDDEN"


def test_huge_but_finite_observations_pass_and_inf_is_located() -> None:
    # The one-pass check sums the values: 3e38 + 3e38 overflows, yet every value is finite.
    huge = np.full((2, 4), 3e38, np.float32)
    assert decode_observations(encode_tensor(huge), obs_dim=4).shape == (2, 4)
    huge[1, 2] = np.inf
    with pytest.raises(InvalidInputError, match=r"obs: expected finite values, got NaN or Inf in row\(s\) \[1\]"):
        decode_observations(encode_tensor(huge), obs_dim=4)


def _tensor(shape, dtype, fill=b"\x01"):
    size = int(np.prod(shape)) if shape else 1
    return tensor_pb2.Tensor(shape=list(shape), dtype=dtype, data=fill * size * (1 if dtype == BOOL else 4))


BOOL = tensor_pb2.DATA_TYPE_BOOL
DECODERS = {
    "obs": lambda msg: decode_observations(msg, obs_dim=91),
    "action_mask": lambda msg: decode_action_mask(msg, batch=1, action_dim=6),
    "hidden h": lambda msg: decode_hidden(msg, _tensor((1, 1, 8), F32, b"\0"), batch=1, hidden_dim=8),
}


@pytest.mark.parametrize("rank", [MAX_RANK + 1, 65, 1000])
@pytest.mark.parametrize(("field", "layout", "dtype"), [("obs", "[B, 91]", F32), ("action_mask", "[1, 6]", BOOL),
                                                         ("hidden h", "[1, 1, 8]", F32)])  # fmt: skip
def test_a_rank_numpy_cannot_build_is_refused_naming_the_field(rank, field, layout, dtype):
    with pytest.raises(InvalidInputError) as info:  # numpy raises a bare ValueError past 64 dimensions
        DECODERS[field](_tensor((1,) * rank, dtype))
    message = str(info.value)
    assert message.startswith(f"{field}: expected shape {layout}, got {rank} dimensions [1, 1, 1, 1, 1, 1, 1, 1, ...")
    assert info.value.reason == "BAD_TENSOR" and len(message) < 200  # the shape is not echoed in full


@pytest.mark.parametrize(
    ("field", "expected"),
    [("obs", "DATA_TYPE_FLOAT32"), ("action_mask", "DATA_TYPE_BOOL"), ("hidden h", "DATA_TYPE_FLOAT32")],
)
def test_an_unset_dtype_names_only_the_dtypes_the_field_takes(field, expected):
    with pytest.raises(InvalidInputError) as info:
        DECODERS[field](tensor_pb2.Tensor(shape=[1, 6], data=b"\x01" * 6))
    message = str(info.value)
    assert f"{field}: expected Tensor.dtype {expected}, got DATA_TYPE_UNSPECIFIED (set Tensor.dtype)" == message
    assert "INT64" not in message


@pytest.mark.parametrize(
    ("decode", "message"),
    [
        (lambda: decode_observations(tensor_pb2.Tensor(), obs_dim=91),
         "obs: missing; send a Tensor of float32 shaped [B, 91]"),
        (lambda: decode_observations(None, obs_dim=54, batch=2),
         "obs: missing; send a Tensor of float32 shaped [B, 54]"),
        (lambda: decode_hidden(tensor_pb2.Tensor(), tensor_pb2.Tensor(), batch=3, hidden_dim=8),
         "hidden h: missing; send a Tensor of float32 shaped [1, 3, 8]"),
        (lambda: decode_hidden(_tensor((1, 3, 8), F32, b"\0"), tensor_pb2.Tensor(), batch=3, hidden_dim=8),
         "hidden c: missing; send a Tensor of float32 shaped [1, 3, 8]"),
    ],
)  # fmt: skip
def test_a_missing_tensor_is_called_missing_not_a_dtype_problem(decode, message):
    with pytest.raises(InvalidInputError) as info:
        decode()
    assert str(info.value) == message and info.value.reason == "MISSING_FIELD"


@pytest.mark.parametrize("shape", [(2**62, 0), (2**40, 2**40, 0), (0, 2**63 - 1)])
def test_an_empty_shape_numpy_cannot_index_is_refused(shape):
    with pytest.raises(InvalidInputError, match=r"obs: shape \[.*\] is too large to index; expected \[B, 91\]"):
        decode_observations(tensor_pb2.Tensor(shape=list(shape), dtype=F32), obs_dim=91)
