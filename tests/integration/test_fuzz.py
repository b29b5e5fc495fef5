"""Property-based fuzz of Predict and StreamEpisode against one real server (started once for the module):
whatever a client sends (any dtype, rank 0 to 200, negative and huge dimensions, byte lengths that fit or not,
NaN/Inf, missing fields, odd epsilons and seeds, unknown models and versions, action masks, hidden states), the
answer is OK or a client error, never INTERNAL or UNKNOWN, a stream frees its state, and the server still
answers a normal Predict after each one.

A few hundred cases run in every `pytest` (``DEFAULT_EXAMPLES``); ``pytest -m fuzz`` runs the long version
(``LONG_EXAMPLES`` each), which a plain run deselects (tests/integration/conftest.py).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from live_server import ThreadedServer
from server_helpers import HIDDEN, LSTM, MLP, OBS_DIM, enc, write_model

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2
from hamlet_server.config import ServerConfig
from hamlet_server.snapshots import SNAPSHOT_FORMAT
from hamlet_server.tensor_codec import MAX_RANK

DEFAULT_EXAMPLES = 200
LONG_EXAMPLES = 3000
SC = grpc.StatusCode
CLIENT_ERRORS = {SC.INVALID_ARGUMENT, SC.NOT_FOUND, SC.FAILED_PRECONDITION, SC.RESOURCE_EXHAUSTED}
ACTION_DIM = 6
MAX_ENVS = 8

F32, I64, BOOL = tensor_pb2.DATA_TYPE_FLOAT32, tensor_pb2.DATA_TYPE_INT64, tensor_pb2.DATA_TYPE_BOOL
_ITEMSIZE = {F32: 4, I64: 8, BOOL: 1}
_INT64 = st.integers(-(2**63), 2**63 - 1)
_RNG_STATE = bytes(torch.Generator().get_state().numpy())  # a real CPU generator state

# ---------------------------------------------------------------------------------------------- strategies
# Each field is mostly right (so that the deeper rules, and the forward, are reached) and otherwise anything.


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, odds: int = 4) -> st.SearchStrategy:
    """`bad` once in `odds` draws, else `good`."""
    return st.integers(1, odds).flatmap(lambda i: bad if i == 1 else good)


DIMS = st.one_of(
    st.integers(0, 3),
    st.sampled_from([6, 54, 90, 91, 256]),
    st.sampled_from([-1, -(2**63), 2**31, 2**40, 2**62, 2**63 - 1]),
)
SHAPES = st.one_of(
    st.lists(DIMS, max_size=3),  # rank 0 to 3: where every field lives
    st.lists(DIMS, min_size=4, max_size=9),  # up to just past the codec's MAX_RANK
    st.lists(st.integers(0, 2), min_size=62, max_size=70),  # around numpy's own limit of 64
    st.integers(65, 200).map(lambda rank: [1] * rank),  # past it, one element
)


@st.composite
def tensors(draw: st.DrawFn) -> tensor_pb2.Tensor:
    """Any Tensor: any dtype (unset and unknown too), any shape; mostly bytes that fit the shape."""
    dtype = draw(st.sampled_from([F32, F32, BOOL, BOOL, I64, tensor_pb2.DATA_TYPE_UNSPECIFIED, 4, 99]))
    shape = draw(SHAPES)
    size = math.prod(shape) * _ITEMSIZE.get(dtype, 4) if all(d >= 0 for d in shape) else -1
    if 0 <= size <= 4096 and draw(st.integers(0, 3)) > 0:
        data = draw(st.binary(min_size=size, max_size=size))
    else:
        data = draw(st.binary(max_size=64))
    return tensor_pb2.Tensor(shape=shape, dtype=dtype, data=data)


@st.composite
def floats(draw: st.DrawFn, shape: tuple[int, ...]) -> tensor_pb2.Tensor:
    """Float32 values of `shape`, now and then with a NaN or an Inf in them."""
    array = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1e3, 1e3, width=32)))
    if array.size and draw(st.integers(0, 7)) == 0:
        array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return enc(array)


def observations(rows: int, width: int) -> st.SearchStrategy:
    """Mostly ``[rows, width]`` (or ``[width]`` for one row); else another batch or width, or any tensor, or none."""
    good = st.sampled_from([(width,), (1, width)] if rows == 1 else [(rows, width)]).flatmap(floats)
    other = st.tuples(st.sampled_from([0, 1, 2, MAX_ENVS + 1]), st.sampled_from([width - 1, 54, 91])).flatmap(floats)
    return mostly(good, st.one_of(st.none(), tensors(), tensors(), other), odds=2)


def action_masks(rows: int) -> st.SearchStrategy:
    """Mostly none; else a bool mask of the right or a wrong shape (rows allowing nothing included), or anything."""
    shapes = st.sampled_from([(rows, ACTION_DIM), (rows, ACTION_DIM), (ACTION_DIM,), (rows + 1, ACTION_DIM), (rows, 5)])
    masks = shapes.flatmap(lambda shape: hnp.arrays(np.bool_, shape, elements=st.booleans(), fill=st.nothing()))
    return mostly(st.none(), st.one_of(masks.map(enc), tensors()), odds=2)


def hidden_states(rows: int) -> st.SearchStrategy:
    """Mostly none; else (h, c), each right, of another batch, missing, or anything."""
    part = st.one_of(floats((1, rows, HIDDEN)), floats((1, rows + 1, HIDDEN)), st.none(), tensors())
    return mostly(st.none(), st.tuples(part, part))


EPSILONS = mostly(st.sampled_from([0.0, 0.1, 1.0]), st.floats(width=32), odds=8)
SEEDS = st.one_of(st.none(), st.integers(0, 2**64 - 1))
VERSIONS = mostly(st.sampled_from([None, 0]), _INT64, odds=8)
MODELS = mostly(st.sampled_from([MLP, LSTM]), st.one_of(st.sampled_from(["", "nope"]), st.text(max_size=300)), odds=8)


def _set(message: object, field: str, value: object) -> None:
    if value is not None:
        getattr(message, field).CopyFrom(value)


def _set_optional(message: object, **values: object) -> None:
    for field, value in values.items():
        if value is not None:
            setattr(message, field, value)


@st.composite
def predict_requests(draw: st.DrawFn) -> pb.PredictRequest:
    model, rows = draw(MODELS), draw(st.integers(1, 3))
    request = pb.PredictRequest(model=model, epsilon=draw(EPSILONS))
    _set_optional(request, version=draw(VERSIONS), seed=draw(SEEDS))
    _set(request, "observations", draw(observations(rows, OBS_DIM.get(model, 91))))
    _set(request, "action_mask", draw(action_masks(rows)))
    hidden = draw(hidden_states(rows))
    if hidden is not None:
        request.hidden.SetInParent()  # present, even with both parts missing
        _set(request.hidden, "h", hidden[0])
        _set(request.hidden, "c", hidden[1])
    return request


def garbled_snapshots() -> st.SearchStrategy:
    return st.builds(pb.EpisodeSnapshot, state=st.binary(max_size=40), checksum=st.binary(max_size=40))


@st.composite
def made_up_snapshots(draw: st.DrawFn, model: str, num_envs: int) -> pb.EpisodeSnapshot:
    """A snapshot no server wrote, whose checksum matches (a server without a token has no MAC to check)."""
    rows = draw(mostly(st.just(num_envs), st.integers(-1, 4)))
    state = pb.EpisodeState(
        format_version=draw(mostly(st.just(SNAPSHOT_FORMAT), st.integers(0, 2**32 - 1))),
        model=draw(mostly(st.just(model), st.sampled_from([MLP, LSTM, "nope"]))),
        version=draw(VERSIONS) or 0, step_index=draw(st.one_of(st.integers(0, 9), _INT64)), num_envs=rows,
        epsilon=draw(st.floats(width=32)), fresh=draw(st.booleans()),
        rng_state=draw(st.one_of(st.just(b""), st.binary(max_size=64), st.just(_RNG_STATE))),
        snapshot_every=draw(st.integers(0, 2**32 - 1)),
    )  # fmt: skip
    sent = min(max(rows, 0), MAX_ENVS + 1)  # a start may ask for 2**31 - 1 environments: no such tensor
    for part in ("hidden_h", "hidden_c"):
        _set(state, part, draw(st.one_of(st.none(), tensors(), floats((sent, HIDDEN)), floats((sent, 8)))))
    payload = state.SerializeToString()
    return pb.EpisodeSnapshot(state=payload, checksum=hashlib.sha256(payload).digest())


@st.composite
def starts(draw: st.DrawFn) -> tuple[pb.StreamEpisodeRequest, int, int]:
    """A start message, and the (num_envs, obs width) its steps should have."""
    model = draw(mostly(st.sampled_from([LSTM, MLP]), st.one_of(st.just("nope"), st.text(max_size=50)), odds=8))
    num_envs = draw(mostly(st.integers(1, 3), st.sampled_from([0, -1, MAX_ENVS + 1, 2**31 - 1]), odds=8))
    start = pb.EpisodeStart(model=model, num_envs=num_envs, epsilon=draw(EPSILONS),
                            snapshot_every=draw(mostly(st.just(0), st.sampled_from([1, 2**32 - 1]))))  # fmt: skip
    _set_optional(start, version=draw(VERSIONS), seed=draw(SEEDS))
    if draw(st.integers(0, 3)) == 0:  # a garbled snapshot, or one made up with a valid checksum
        start.resume_from.CopyFrom(draw(st.one_of(garbled_snapshots(), made_up_snapshots(model, num_envs))))
    rows = min(max(num_envs, 1), MAX_ENVS + 1)  # what the steps send: never 2**31 - 1 rows
    return pb.StreamEpisodeRequest(start=start), rows, OBS_DIM.get(model, 54)


@st.composite
def steps(draw: st.DrawFn, rows: int, width: int) -> pb.StreamEpisodeRequest:
    step = pb.EpisodeStep(reset=draw(mostly(st.just([]), st.lists(st.booleans(), max_size=4))))
    _set(step, "observations", draw(observations(rows, width)))
    _set(step, "action_mask", draw(action_masks(rows)))
    _set_optional(step, epsilon=draw(st.one_of(st.none(), EPSILONS)))
    return pb.StreamEpisodeRequest(step=step)


@st.composite
def streams(draw: st.DrawFn) -> list[pb.StreamEpisodeRequest]:
    """Mostly a start and its steps; else any messages in any order (steps before a start, two starts, empty)."""
    start, rows, width = draw(starts())
    messages = [start, *draw(st.lists(steps(rows, width), max_size=4))]
    if draw(st.integers(0, 3)) == 0:
        messages = draw(st.permutations([*messages, pb.StreamEpisodeRequest(), start]))[: draw(st.integers(0, 4))]
    return messages


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    root: Path = tmp_path_factory.mktemp("fuzz") / "models"
    write_model(root, MLP, MLP, 0, seed=0)
    write_model(root, LSTM, LSTM, 0, seed=1)
    config = ServerConfig(
        models=root, port=0, metrics_port=0, device="cpu", backend="torch", poll_interval=0.0, grace=0.5,
        max_envs=MAX_ENVS, max_predict_batch=MAX_ENVS,
    )  # fmt: skip
    server = ThreadedServer(config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(live: ThreadedServer) -> Iterator[pb_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(live.target) as channel:
        yield pb_grpc.InferenceServiceStub(channel)


# --------------------------------------------------------------------------------------------- properties


def _still_serving(stub: pb_grpc.InferenceServiceStub) -> None:
    good = pb.PredictRequest(model=MLP, observations=enc(np.zeros((1, OBS_DIM[MLP]), np.float32)))
    assert len(stub.Predict(good, timeout=30).actions) == 1


def _rank(tensor: tensor_pb2.Tensor) -> str:
    rank = len(tensor.shape)
    return "rank <= 3" if rank <= 3 else f"rank 4..{MAX_RANK}" if rank <= MAX_RANK else f"rank above {MAX_RANK}"


def _check_predict(stub: pb_grpc.InferenceServiceStub, request: pb.PredictRequest) -> None:
    event(f"observations {_rank(request.observations)}")  # --hypothesis-show-statistics shows the spread
    try:
        response = stub.Predict(request, timeout=30)
    except grpc.RpcError as error:
        event(f"Predict {error.code().name}")
        assert error.code() in CLIENT_ERRORS, (error.code(), error.details())
        assert error.details(), "an error without a message"
    else:
        event("Predict OK")
        assert response.actions and all(0 <= a < ACTION_DIM for a in response.actions), response
    _still_serving(stub)


def _check_stream(live: ThreadedServer, stub: pb_grpc.InferenceServiceStub, requests: list) -> None:
    call = stub.StreamEpisode(iter(requests), timeout=30)
    responses = []
    try:
        responses.extend(call)
    except grpc.RpcError as error:
        event(f"StreamEpisode {error.code().name}")
        assert error.code() in CLIENT_ERRORS, (error.code(), error.details())
    else:
        event("StreamEpisode OK")
    if any(r.started.resumed for r in responses if r.WhichOneof("kind") == "started"):
        event("StreamEpisode resumed from a made-up snapshot")
    ended = [r.ended for r in responses if r.WhichOneof("kind") == "ended"]
    assert all(SC.INTERNAL.value[0] != e.status_code != SC.UNKNOWN.value[0] for e in ended), ended
    deadline = time.monotonic() + 10  # the server frees a stream before it sends the status; allow for a slow box
    while live.sessions() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live.sessions() == 0, "a fuzzed stream left its state behind"
    _still_serving(stub)


_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


@settings(max_examples=DEFAULT_EXAMPLES, **_SETTINGS)
@given(request=predict_requests())
def test_no_predict_request_is_a_server_error(stub, request):
    _check_predict(stub, request)


@settings(max_examples=DEFAULT_EXAMPLES, **_SETTINGS)
@given(requests=streams())
def test_no_stream_is_a_server_error(live, stub, requests):
    _check_stream(live, stub, requests)


@pytest.mark.fuzz
@settings(max_examples=LONG_EXAMPLES, **_SETTINGS)
@given(request=predict_requests())
def test_no_predict_request_is_a_server_error_long(stub, request):
    _check_predict(stub, request)


@pytest.mark.fuzz
@settings(max_examples=LONG_EXAMPLES, **_SETTINGS)
@given(requests=streams())
def test_no_stream_is_a_server_error_long(live, stub, requests):
    _check_stream(live, stub, requests)
