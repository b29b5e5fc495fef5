"""hamlet_client's pure parts: tensor <-> proto conversion, request building, response parsing, errors."""

from __future__ import annotations

import json
import pickle

import grpc
import numpy as np
import pytest

from hamlet_client import errors
from hamlet_client.connection import DEFAULT_OPTIONS, auth_metadata, channel_options
from hamlet_client.messages import episode_start_request, episode_step_request, predict_request
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import model_pb2, tensor_pb2
from hamlet_client.results import metadata_from_proto, model_infos_from_proto, prediction_from_proto
from hamlet_client.service_config import IDEMPOTENT_METHODS, RetryPolicy, service_config
from hamlet_client.tensors import (
    decode_hidden,
    decode_tensor,
    encode_action_mask,
    encode_hidden,
    encode_reset,
    encode_tensor,
    to_observation_batch,
)

# ---------------------------------------------------------------- tensors


@pytest.mark.parametrize(
    ("array", "dtype"),
    [
        (np.arange(12, dtype=np.float32).reshape(3, 4) / 7, tensor_pb2.DATA_TYPE_FLOAT32),
        (np.array([[1, -2], [3, 2**40]], dtype=np.int64), tensor_pb2.DATA_TYPE_INT64),
        (np.array([[True, False, True]]), tensor_pb2.DATA_TYPE_BOOL),
        (np.zeros((0, 5), dtype=np.float32), tensor_pb2.DATA_TYPE_FLOAT32),
    ],
)
def test_encode_decode_round_trip_is_exact(array: np.ndarray, dtype: int) -> None:
    msg = encode_tensor(array)
    assert msg.dtype == dtype
    assert list(msg.shape) == list(array.shape)
    wire = tensor_pb2.Tensor.FromString(msg.SerializeToString())
    back = decode_tensor(wire)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_encode_writes_little_endian_bytes_whatever_the_input_byte_order() -> None:
    big = np.array([1.5, -2.0], dtype=">f4")
    msg = encode_tensor(big)
    assert msg.data == np.array([1.5, -2.0], dtype="<f4").tobytes()
    assert encode_tensor(np.array([3], dtype=np.int32)).data == np.array([3], dtype="<i8").tobytes()


def test_decode_refuses_bytes_that_do_not_fit_the_shape() -> None:
    bad = tensor_pb2.Tensor(shape=[2, 3], dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=b"\0" * 20)
    with pytest.raises(errors.InternalError, match=r"shape \[2, 3\] with 20 bytes"):
        decode_tensor(bad)
    with pytest.raises(errors.InternalError, match="unsupported dtype"):
        decode_tensor(tensor_pb2.Tensor(shape=[1], data=b"\0" * 4))


def test_one_observation_becomes_a_batch_of_one_and_lists_work() -> None:
    assert to_observation_batch([0.5, 1.0, 2.0]).shape == (1, 3)
    batch = to_observation_batch([[1, 2], [3, 4]])
    assert batch.dtype == np.float32
    assert batch.shape == (2, 2)


@pytest.mark.parametrize(
    ("obs", "match"),
    [
        ([[1.0, 2.0], [3.0]], "list or array of floats"),
        (np.zeros((2, 3, 4)), r"got shape \[2, 3, 4\]"),
        (np.zeros((0, 3)), "non-empty"),
        ([1.0, float("nan"), 0.0], r"NaN or Inf in row\(s\) \[0\]"),
        ((np.zeros(3), {}), r"\(observation, info\) tuple"),
        ("abc", "list or array of floats"),
    ],
)
def test_bad_observations_raise_invalid_argument_before_sending(obs: object, match: str) -> None:
    with pytest.raises(errors.InvalidArgumentError, match=match) as info:
        to_observation_batch(obs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(info.value, ValueError)


def test_action_mask_checks_dtype_batch_and_empty_rows() -> None:
    msg = encode_action_mask([True, False, True], batch=1)
    assert list(msg.shape) == [1, 3]
    with pytest.raises(errors.InvalidArgumentError, match="bool"):
        encode_action_mask([1, 0, 1], batch=1)
    with pytest.raises(errors.InvalidArgumentError, match=r"\[2, action_dim\]"):
        encode_action_mask(np.ones((3, 4), dtype=bool), batch=2)
    with pytest.raises(errors.InvalidArgumentError, match=r"row\(s\) \[1\] allow no action"):
        encode_action_mask(np.array([[True, False], [False, False]]), batch=2)


def test_hidden_round_trip_and_shape_checks() -> None:
    rng = np.random.default_rng(0)
    h = rng.standard_normal((1, 3, 8)).astype(np.float32)
    c = rng.standard_normal((1, 3, 8)).astype(np.float32)
    back = decode_hidden(encode_hidden((h, c), batch=3))
    assert back is not None
    np.testing.assert_array_equal(back[0], h)
    np.testing.assert_array_equal(back[1], c)
    assert decode_hidden(tensor_pb2.HiddenState()) is None
    with pytest.raises(errors.InvalidArgumentError, match=r"\[1, 2, hidden_dim\]"):
        encode_hidden((h, c), batch=2)
    with pytest.raises(errors.InvalidArgumentError, match="pair"):
        encode_hidden((h,), batch=3)
    with pytest.raises(errors.InvalidArgumentError, match="differ"):
        encode_hidden((h, c[:, :, :4]), batch=3)


def test_reset_accepts_none_one_bool_or_one_per_env() -> None:
    assert encode_reset(None, num_envs=3) == []
    assert encode_reset(True, num_envs=3) == [True, True, True]
    assert encode_reset(np.array([False, True]), num_envs=2) == [False, True]
    with pytest.raises(errors.InvalidArgumentError, match="3 bools"):
        encode_reset([True, False], num_envs=3)


# ---------------------------------------------------------------- requests


def test_predict_request_carries_every_argument() -> None:
    h = np.zeros((1, 2, 4), dtype=np.float32)
    req = predict_request(
        np.ones((2, 5)),
        model="m",
        version=7,
        epsilon=0.25,
        hidden=(h, h + 1),
        seed=2**63,
        action_mask=np.ones((2, 6), dtype=bool),
    )
    assert (req.model, req.version, req.epsilon, req.seed) == ("m", 7, 0.25, 2**63)
    assert list(req.observations.shape) == [2, 5]
    assert list(req.hidden.c.shape) == [1, 2, 4]
    assert list(req.action_mask.shape) == [2, 6]
    bare = predict_request([1.0, 2.0], model=None, version=None, epsilon=0.0, hidden=None, seed=None, action_mask=None)
    assert bare.model == ""
    assert not bare.HasField("version")
    assert not bare.HasField("seed")
    assert not bare.HasField("hidden")
    assert not bare.HasField("action_mask")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 1.5}, "epsilon"),
        ({"epsilon": True}, "epsilon"),
        ({"version": -1}, "version"),
        ({"seed": -3}, "seed"),
        ({"model": 3}, "model"),
    ],
)
def test_predict_request_refuses_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {
        "model": None, "version": None, "epsilon": 0.0, "hidden": None, "seed": None, "action_mask": None,
    }  # fmt: skip
    base.update(kwargs)
    with pytest.raises(errors.InvalidArgumentError, match=match):
        predict_request([1.0], **base)  # type: ignore[arg-type]


def test_episode_requests() -> None:
    start = episode_start_request(model="m", version=None, num_envs=4, epsilon=0.1, seed=5)
    assert start.WhichOneof("kind") == "start"
    assert (start.start.num_envs, start.start.seed) == (4, 5)
    assert not start.start.HasField("version")
    with pytest.raises(errors.InvalidArgumentError, match="num_envs"):
        episode_start_request(model=None, version=None, num_envs=0, epsilon=0.0, seed=None)
    step = episode_step_request(np.zeros((4, 3)), num_envs=4, reset=[True, False, False, True], action_mask=None,
                                epsilon=0.5)  # fmt: skip
    assert list(step.step.reset) == [True, False, False, True]
    assert step.step.epsilon == 0.5
    assert not episode_step_request([1.0], num_envs=1, reset=None, action_mask=None, epsilon=None).step.HasField(
        "epsilon"
    )
    with pytest.raises(errors.InvalidArgumentError, match=r"one observation per environment, \[4, obs_dim\]"):
        episode_step_request(np.zeros((3, 3)), num_envs=4, reset=None, action_mask=None, epsilon=None)


# ---------------------------------------------------------------- responses


def test_prediction_from_proto() -> None:
    q = np.array([[0.1, 0.9], [0.5, -1.0]], dtype=np.float32)
    h = np.full((1, 2, 3), 0.5, dtype=np.float32)
    resp = pb.PredictResponse(model="m", version=3, actions=[1, 0], q_values=encode_tensor(q))
    result = prediction_from_proto(pb.PredictResponse.FromString(resp.SerializeToString()))
    assert result.actions.dtype == np.int64
    np.testing.assert_array_equal(result.actions, [1, 0])
    np.testing.assert_array_equal(result.q_values, q)
    assert result.hidden is None
    assert result.model_version == ("m", 3)
    resp.hidden.CopyFrom(tensor_pb2.HiddenState(h=encode_tensor(h), c=encode_tensor(-h)))
    hidden = prediction_from_proto(resp).hidden
    assert hidden is not None
    np.testing.assert_array_equal(hidden[1], -h)


def test_model_infos_and_metadata_from_proto() -> None:
    resp = pb.ListModelsResponse(
        default_model="b",
        models=[
            model_pb2.ModelSummary(name="a", versions=[1, 2], loaded_versions=[2], latest_version=2,
                                   network_type=model_pb2.NETWORK_TYPE_SIMPLE, obs_dim=91, action_dim=6),
            model_pb2.ModelSummary(name="b", network_type=model_pb2.NETWORK_TYPE_RECURRENT),
        ],
    )  # fmt: skip
    a, b = model_infos_from_proto(resp)
    assert (a.name, a.versions, a.loaded_versions, a.network_type, a.is_default) == ("a", (1, 2), (2,), "simple", False)
    assert (b.network_type, b.is_default) == ("recurrent", True)
    meta = metadata_from_proto(model_pb2.ModelMetadata(name="a", version=2, hidden_dim=0, extra={"untrained": "true"}))
    assert meta.epsilon is None
    assert meta.curriculum_stage is None
    assert meta.extra == {"untrained": "true"}
    assert not meta.recurrent
    with_eps = metadata_from_proto(model_pb2.ModelMetadata(epsilon=0.0, curriculum_stage=0))
    assert (with_eps.epsilon, with_eps.curriculum_stage) == (0.0, 0)


# ---------------------------------------------------------------- errors and connection settings

_EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT: (errors.InvalidArgumentError, ValueError),
    grpc.StatusCode.NOT_FOUND: (errors.ModelNotFoundError, LookupError),
    grpc.StatusCode.FAILED_PRECONDITION: (errors.FailedPreconditionError, errors.HamletError),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (errors.CapacityExceededError, errors.HamletError),
    grpc.StatusCode.UNAVAILABLE: (errors.UnavailableError, ConnectionError),
    grpc.StatusCode.DEADLINE_EXCEEDED: (errors.DeadlineExceededError, TimeoutError),
    grpc.StatusCode.UNAUTHENTICATED: (errors.UnauthenticatedError, errors.HamletError),
    grpc.StatusCode.PERMISSION_DENIED: (errors.PermissionDeniedError, errors.HamletError),
    grpc.StatusCode.CANCELLED: (errors.CancelledError, errors.HamletError),
    grpc.StatusCode.UNIMPLEMENTED: (errors.UnimplementedError, errors.HamletError),
    grpc.StatusCode.INTERNAL: (errors.InternalError, errors.HamletError),
    grpc.StatusCode.UNKNOWN: (errors.InternalError, errors.HamletError),
    grpc.StatusCode.DATA_LOSS: (errors.InternalError, errors.HamletError),
    grpc.StatusCode.ABORTED: (errors.HamletError, Exception),
}


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize("code", list(_EXPECTED))
def test_every_status_code_maps_to_its_class_keeping_message_and_code(code: grpc.StatusCode) -> None:
    cls, also = _EXPECTED[code]
    err = errors.from_rpc_error(_FakeRpcError(code, f"server says {code.name}"))
    assert type(err) is cls
    assert isinstance(err, also)
    assert isinstance(err, errors.HamletError)
    assert err.code == code
    assert str(err) == err.message == f"server says {code.name}"
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.code, again.message) == (cls, code, err.message)


def test_error_without_details_names_the_code() -> None:
    err = errors.from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, None))
    assert "UNAVAILABLE" in str(err)
    assert "UnavailableError" in repr(err)


def test_the_retry_policy_is_grpcs_service_config() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.3, multiplier=1.5)
    config = json.loads(service_config(policy, balance=False))
    assert set(config) == {"methodConfig"}  # one target: pick_first, no health checking
    (method_config,) = config["methodConfig"]
    names = {(name["service"], name["method"]) for name in method_config["name"]}
    assert names == {("hamlet.v1.InferenceService", m) for m in IDEMPOTENT_METHODS}
    assert "WatchEpisodes" not in IDEMPOTENT_METHODS
    assert method_config["retryPolicy"] == {
        "maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "0.3s", "backoffMultiplier": 1.5,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }  # fmt: skip
    assert json.loads(service_config(RetryPolicy(max_attempts=1), balance=False)) == {}  # gRPC wants >= 2
    balanced = json.loads(service_config(RetryPolicy(), balance=True))
    assert balanced["loadBalancingConfig"] == [{"round_robin": {}}]
    assert balanced["healthCheckConfig"] == {"serviceName": "hamlet.v1.Liveness"}
    assert balanced["methodConfig"][0]["retryPolicy"]["initialBackoff"] == "0.05s"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_attempts": 0}, r"max_attempts: expected 1\.\.5"),
        ({"max_attempts": 6}, r"max_attempts: expected 1\.\.5 \(gRPC's cap"),
        ({"initial_backoff": 0.001}, r"initial_backoff: expected at least 0\.01 s"),
        ({"max_backoff": 0}, r"max_backoff: expected at least 0\.01 s"),
        ({"multiplier": 0}, r"multiplier: expected a number > 0"),
    ],
)
def test_a_retry_policy_grpc_would_not_honour_is_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_the_channel_gets_the_service_config_unless_the_caller_gives_one() -> None:
    opts = dict(channel_options([("grpc.service_config", "{}")]))
    assert opts["grpc.service_config"] == "{}"
    assert opts["grpc.per_rpc_retry_buffer_size"] >= dict(DEFAULT_OPTIONS)["grpc.max_send_message_length"]


def test_token_and_channel_options() -> None:
    assert auth_metadata(None) is None
    assert auth_metadata("s3cret") == (("authorization", "Bearer s3cret"),)
    with pytest.raises(ValueError, match="line breaks"):
        auth_metadata("a\nb")
    opts = dict(channel_options([("grpc.max_receive_message_length", 1024), ("grpc.keepalive_time_ms", 5)]))
    assert opts["grpc.max_receive_message_length"] == 1024
    assert opts["grpc.keepalive_time_ms"] == 5
    assert opts["grpc.max_send_message_length"] == dict(DEFAULT_OPTIONS)["grpc.max_send_message_length"]
