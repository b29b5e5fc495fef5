"""One rule per fact: the same mistake gets the same message from `HamletModel.predict` (numpy or torch input)
and from a real server's Predict, whose status is INVALID_ARGUMENT with the rule's reason in its ErrorInfo."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
import torch
from google.rpc import error_details_pb2, status_pb2
from server_helpers import HIDDEN, LSTM, MLP, OBS_DIM, dec, enc

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import tensor_pb2
from townlet.inference import HamletModel, InvalidInputError


def _obs(kind: str, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).random((batch, OBS_DIM[kind]), dtype=np.float32)


def _with(array: np.ndarray, index: tuple[int, ...], value: float) -> np.ndarray:
    changed = array.copy()
    changed[index] = value
    return changed


def _zeros_state(batch: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((1, batch, HIDDEN), np.float32), np.zeros((1, batch, HIDDEN), np.float32)


_EMPTY_ROW = _with(np.ones((2, 6), bool), (1,), False)
_NAN_C = (np.zeros((1, 2, HIDDEN), np.float32), _with(np.zeros((1, 2, HIDDEN), np.float32), (0, 1, 7), np.inf))

# (model, predict's arguments, the reason, whether a torch tensor input gives the same text: not where the
# message quotes a dtype, which torch spells torch.float32)
MISTAKES: dict[str, tuple[str, dict[str, Any], str, bool]] = {
    "observation width": (MLP, {"obs": _obs(LSTM)}, "OBS_WIDTH_MISMATCH", True),
    "one observation of the wrong width": (MLP, {"obs": _obs(MLP)[0, :90]}, "OBS_WIDTH_MISMATCH", True),
    "rank 3": (MLP, {"obs": _obs(MLP)[None]}, "BAD_TENSOR", True),
    "empty batch": (MLP, {"obs": _obs(MLP, 0)}, "BAD_TENSOR", True),
    "integer observations": (MLP, {"obs": _obs(MLP).astype(np.int64)}, "BAD_TENSOR", False),
    "NaN in an observation": (MLP, {"obs": _with(_obs(MLP), (1, 3), np.nan)}, "BAD_TENSOR", True),
    "Inf in the hidden state": (LSTM, {"obs": _obs(LSTM), "hidden": _NAN_C}, "BAD_TENSOR", True),
    "hidden of another batch": (LSTM, {"obs": _obs(LSTM), "hidden": _zeros_state(3)}, "BAD_TENSOR", True),
    "hidden to a feed-forward model": (MLP, {"obs": _obs(MLP), "hidden": _zeros_state(2)}, "UNEXPECTED_HIDDEN", True),
    "epsilon above 1": (MLP, {"obs": _obs(MLP), "epsilon": 1.5}, "BAD_EPSILON", True),
    "epsilon below 0": (MLP, {"obs": _obs(MLP), "epsilon": -0.5}, "BAD_EPSILON", True),
    "action mask shape": (MLP, {"obs": _obs(MLP), "action_mask": np.ones((2, 5), bool)}, "BAD_TENSOR", True),
    "action mask row allowing nothing": (MLP, {"obs": _obs(MLP), "action_mask": _EMPTY_ROW}, "BAD_TENSOR", True),
    "action mask not bool": (MLP, {"obs": _obs(MLP), "action_mask": np.ones((2, 6), np.float32)}, "BAD_TENSOR", False),
}


def _request(model: str, obs: np.ndarray, hidden: Any = None, epsilon: float = 0.0, action_mask: Any = None) -> Any:
    request = pb.PredictRequest(model=model, observations=enc(obs), epsilon=epsilon)
    if hidden is not None:
        request.hidden.CopyFrom(tensor_pb2.HiddenState(h=enc(hidden[0]), c=enc(hidden[1])))
    if action_mask is not None:
        request.action_mask.CopyFrom(enc(action_mask))
    return request


def _library_error(model: HamletModel, arguments: dict[str, Any]) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        model.predict(**arguments)
    return caught.value


def _error_reason(error: grpc.aio.AioRpcError) -> str:
    status = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError("no ErrorInfo in the status")


@pytest.mark.parametrize("mistake", list(MISTAKES))
async def test_a_mistake_gets_the_same_message_from_the_library_and_the_server(stub, local_models, mistake):
    kind, arguments, reason, torch_says_the_same = MISTAKES[mistake]
    library = _library_error(local_models[kind], arguments)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Predict(_request(kind, **arguments))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == str(library)
    assert _error_reason(caught.value) == library.reason == reason
    if torch_says_the_same:
        as_torch = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in arguments.items()}
        if isinstance(as_torch.get("hidden"), tuple):
            as_torch["hidden"] = tuple(torch.from_numpy(part) for part in arguments["hidden"])
        assert str(_library_error(local_models[kind], as_torch)) == str(library)


async def test_one_observation_is_a_batch_of_one_on_both_sides(stub, local_models):
    obs = _obs(MLP)[0]
    response = await stub.Predict(_request(MLP, obs))
    expected = local_models[MLP].predict(obs)
    np.testing.assert_allclose(dec(response.q_values), expected.q_values, rtol=1e-5, atol=1e-6)
    assert list(response.actions) == expected.actions.tolist() and dec(response.q_values).shape == (1, 6)
