"""Every bad request gets its status code and a message naming expected vs got, and harms no other stream."""

from __future__ import annotations

import logging
import re

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from server_helpers import LSTM, MLP, assert_ended, dec, enc, obs_batch, read_to_end, start_msg, step_msg

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2

IA = grpc.StatusCode.INVALID_ARGUMENT
RNG = np.random.default_rng(0)
GOOD_MLP = obs_batch(MLP, 2, RNG)
GOOD_LSTM = obs_batch(LSTM, 2, RNG)


def _with_nan(obs):
    bad = obs.copy()
    bad[1, 3] = np.nan
    return bad


def _rank(rank, dtype):
    """A one-element tensor of `rank` dimensions (numpy builds none past 64)."""
    return tensor_pb2.Tensor(
        shape=[1] * rank, dtype=dtype, data=b"\x01" * (1 if dtype == tensor_pb2.DATA_TYPE_BOOL else 4)
    )


def _mask_with_empty_row():
    mask = np.ones((2, 6), dtype=bool)
    mask[1] = False
    return mask


PREDICT_CASES = {
    "wrong width": (pb.PredictRequest(model=MLP, observations=enc(obs_batch(MLP, 2, RNG)[:, :90])), IA,
                    ["obs: expected shape [91] or [B, 91]", "[2, 90]"]),
    "one observation too narrow": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP[0, :90])), IA,
                                   ["[91] or [B, 91]", "got [1, 90]"]),
    "rank 3": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP[None])), IA, ["[91] or [B, 91]", "[1, 2, 91]"]),
    "int64 observations": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP.astype(np.int64))), IA,
        ["obs: expected a float array, got dtype int64"]),
    "dtype unset": (pb.PredictRequest(model=MLP, observations=tensor_pb2.Tensor(
        shape=[2, 91], data=GOOD_MLP.tobytes())), IA, ["DATA_TYPE_UNSPECIFIED"]),
    "byte length": (pb.PredictRequest(model=MLP, observations=tensor_pb2.Tensor(
        shape=[2, 91], dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=GOOD_MLP.tobytes()[:-4])), IA, ["728 bytes", "724"]),
    "nan": (pb.PredictRequest(model=MLP, observations=enc(_with_nan(GOOD_MLP))), IA, ["finite", "NaN", "row(s) [1]"]),
    "inf": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP * np.float32(np.inf))), IA, ["finite", "Inf"]),
    "empty batch": (pb.PredictRequest(model=MLP, observations=enc(np.zeros((0, 91), np.float32))), IA,
                    ["empty batch"]),
    "no observations": (pb.PredictRequest(model=MLP), IA, ["obs: missing", "float32", "[B, 91]"]),
    "rank 65 observations": (pb.PredictRequest(model=MLP, observations=_rank(65, tensor_pb2.DATA_TYPE_FLOAT32)), IA,
                             ["obs: expected shape [B, 91], got 65 dimensions", "at most 8"]),
    "rank 65 action mask": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP),
                                              action_mask=_rank(65, tensor_pb2.DATA_TYPE_BOOL)), IA,
                            ["action_mask: expected shape [2, 6], got 65 dimensions"]),
    "rank 65 hidden": (pb.PredictRequest(model=LSTM, observations=enc(GOOD_LSTM), hidden=tensor_pb2.HiddenState(
        h=_rank(65, tensor_pb2.DATA_TYPE_FLOAT32), c=enc(np.zeros((1, 2, 256), np.float32)))), IA,
        ["hidden h: expected shape [1, 2, 256], got 65 dimensions"]),
    "hidden c missing": (pb.PredictRequest(model=LSTM, observations=enc(GOOD_LSTM), hidden=tensor_pb2.HiddenState(
        h=enc(np.zeros((1, 2, 256), np.float32)))), IA, ["hidden c: missing", "[1, 2, 256]"]),
    "observations of an unknown dtype": (pb.PredictRequest(model=MLP, observations=tensor_pb2.Tensor(
        shape=[2, 91], dtype=9, data=GOOD_MLP.tobytes())), IA, ["expected Tensor.dtype DATA_TYPE_FLOAT32, got"]),
    "unknown model": (pb.PredictRequest(model="nope", observations=enc(GOOD_MLP)), grpc.StatusCode.NOT_FOUND,
                      ["'nope'", "available", MLP]),
    "unknown version": (pb.PredictRequest(model=MLP, version=7, observations=enc(GOOD_MLP)),
                        grpc.StatusCode.NOT_FOUND, ["no version 7", "[0]"]),
    "epsilon above 1": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP), epsilon=1.5), IA,
                        ["[0, 1]", "1.5"]),
    "epsilon negative": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP), epsilon=-0.1), IA, ["[0, 1]"]),
    "hidden wrong shape": (pb.PredictRequest(model=LSTM, observations=enc(GOOD_LSTM), hidden=tensor_pb2.HiddenState(
        h=enc(np.zeros((1, 3, 256), np.float32)), c=enc(np.zeros((1, 3, 256), np.float32)))), IA,
        ["hidden h", "[1, 2, 256]", "[1, 3, 256]"]),
    "hidden on mlp": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP), hidden=tensor_pb2.HiddenState(
        h=enc(np.zeros((1, 2, 256), np.float32)), c=enc(np.zeros((1, 2, 256), np.float32)))), IA,
        ["feed-forward"]),
    "mask empty row": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP),
                                         action_mask=enc(_mask_with_empty_row())), IA,
                       ["row(s) [1] allow no action"]),
    "mask wrong shape": (pb.PredictRequest(model=MLP, observations=enc(GOOD_MLP),
                                           action_mask=enc(np.ones((2, 5), bool))), IA, ["[2, 6]", "[2, 5]"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(PREDICT_CASES))
async def test_bad_predict_gets_a_precise_status(stub, case):
    request, code, fragments = PREDICT_CASES[case]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Predict(request)
    assert info.value.code() == code, info.value.details()
    for fragment in fragments:
        assert fragment in info.value.details(), (fragment, info.value.details())


async def test_message_over_the_size_limit_is_refused(server_factory):
    server = await server_factory(max_message_mb=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        big = np.zeros((3000, 91), np.float32)  # ~1.1 MB
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(big)))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in info.value.details()
        ok = await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(big[:100])))  # still serving
        assert len(ok.actions) == 100


def _reason(error):
    status = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    return info.reason


async def test_a_response_over_the_size_limit_is_the_requests_fault_and_logs_no_error(server_factory, caplog):
    server = await server_factory(max_message_mb=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        obs = np.zeros((600, 54), np.float32)  # 130 KB in; out the Q-values and (h, c) of 600 rows: 1.2 MB
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Predict(pb.PredictRequest(model=LSTM, observations=enc(obs)))
            assert info.value.code() == IA and _reason(info.value) == "RESPONSE_TOO_LARGE"
        details = info.value.details()
        assert details.startswith("obs: the response for 600 rows would be") and "--max-message-mb 1" in details
        fit = int(re.search(r"send at most (\d+) rows per Predict", details)[1])
        ok = await stub.Predict(pb.PredictRequest(model=LSTM, observations=enc(obs[:fit])))  # the advice works
        assert len(ok.actions) == fit
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a client's mistake logged an error"


async def test_a_stream_whose_snapshot_is_over_the_size_limit_ends_as_a_bad_request(server_factory, caplog):
    server = await server_factory(max_message_mb=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(start_msg(LSTM, 600, snapshot_every=1))  # (h, c) of 600 rows: a 1.2 MB snapshot
        await call.write(_step(np.zeros((600, 54), np.float32)))
        responses, error = await read_to_end(call)
    assert error is not None and error.code() == IA and _reason(error) == "RESPONSE_TOO_LARGE"
    assert error.details().startswith("start.snapshot_every: ") and "at most" in error.details()
    assert_ended(responses[-1], "bad_request", IA, "RESPONSE_TOO_LARGE")
    assert len(server.streams) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a client's mistake logged an error"


async def test_a_drain_snapshot_over_the_size_limit_still_ends_the_stream_in_band(server_factory):
    server = await server_factory(max_message_mb=1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(start_msg(LSTM, 600))  # the drain's snapshot of 600 rows of (h, c): 1.2 MB
        await call.read()
        await call.write(_step(np.zeros((600, 54), np.float32)))
        assert (await call.read()).WhichOneof("kind") == "step"
        await server.drain(grace=1.0)
        responses, error = await read_to_end(call)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert_ended(responses[-1], "server_draining", grpc.StatusCode.UNAVAILABLE)  # not lost to the size limit
    assert not responses[-1].ended.HasField("snapshot") and "snapshot is over" in responses[-1].ended.message


async def test_predict_batch_over_the_limit(server_factory):
    server = await server_factory(max_predict_batch=8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(np.zeros((9, 91), np.float32))))
        assert info.value.code() == IA and "at most 8 rows" in info.value.details()


def _step(obs, **kw):
    return step_msg(obs, **kw)


STREAM_CASES = {
    "step before start": ([_step(GOOD_LSTM)], grpc.StatusCode.FAILED_PRECONDITION, ["step before start"]),
    "second start": ([start_msg(LSTM, 2), start_msg(LSTM, 2)], grpc.StatusCode.FAILED_PRECONDITION, ["second start"]),
    "num_envs 0": ([start_msg(LSTM, 0)], IA, ["1..64", "got 0"]),
    "num_envs above limit": ([start_msg(LSTM, 65)], IA, ["1..64", "got 65"]),
    "unknown model": ([start_msg("nope", 1)], grpc.StatusCode.NOT_FOUND, ["'nope'"]),
    "unknown version": ([pb.StreamEpisodeRequest(start=pb.EpisodeStart(model=LSTM, num_envs=1, version=3))],
                        grpc.StatusCode.NOT_FOUND, ["no version 3"]),
    "epsilon out of range": ([start_msg(LSTM, 2, epsilon=2.0)], IA, ["start.epsilon", "[0, 1]"]),
    "step epsilon out of range": ([start_msg(LSTM, 2), _step(GOOD_LSTM, epsilon=-1.0)], IA, ["step.epsilon"]),
    "rows != num_envs": ([start_msg(LSTM, 3), _step(GOOD_LSTM)], IA, ["[3, 54]", "[2, 54]"]),
    "wrong width": ([start_msg(LSTM, 2), _step(GOOD_MLP)], IA, ["[54] or [B, 54]"]),
    "nan": ([start_msg(LSTM, 2), _step(_with_nan(GOOD_LSTM))], IA, ["finite"]),
    "reset length": ([start_msg(LSTM, 2), _step(GOOD_LSTM, reset=[True, False, True])], IA, ["2 flags", "got 3"]),
    "mask empty row": ([start_msg(LSTM, 2), pb.StreamEpisodeRequest(step=pb.EpisodeStep(
        observations=enc(GOOD_LSTM), action_mask=enc(_mask_with_empty_row())))], IA, ["allow no action"]),
    "empty request": ([pb.StreamEpisodeRequest()], IA, ["set start or step"]),
    "rank 65 step observations": ([start_msg(LSTM, 2), pb.StreamEpisodeRequest(step=pb.EpisodeStep(
        observations=_rank(65, tensor_pb2.DATA_TYPE_FLOAT32)))], IA, ["obs: expected shape [B, 54], got 65"]),
    "rank 65 step action mask": ([start_msg(LSTM, 2), pb.StreamEpisodeRequest(step=pb.EpisodeStep(
        observations=enc(GOOD_LSTM), action_mask=_rank(65, tensor_pb2.DATA_TYPE_BOOL)))], IA,
        ["action_mask: expected shape [2, 6], got 65 dimensions"]),
    "step without observations": ([start_msg(LSTM, 2), pb.StreamEpisodeRequest(step=pb.EpisodeStep())], IA,
                                  ["obs: missing"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(STREAM_CASES))
async def test_bad_stream_gets_a_precise_status_and_frees_state(stub, server, case):
    requests, code, fragments = STREAM_CASES[case]
    call = stub.StreamEpisode()
    for request in requests:
        await call.write(request)
    responses, error = await read_to_end(call)
    assert error is not None and error.code() == code, error
    for fragment in fragments:
        assert fragment in error.details(), (fragment, error.details())
    assert_ended(responses[-1], "bad_request", code)  # said in-band first, with the same message
    assert responses[-1].ended.message == error.details() and responses[-1].ended.error_reason
    assert len(server.streams) == 0


@pytest.fixture
async def server(server_factory):
    return await server_factory(max_envs=64)


async def test_a_bad_stream_does_not_harm_a_good_one(stub, server, local_models):
    import torch

    good = stub.StreamEpisode()
    await good.write(start_msg(LSTM, 2))
    await good.read()
    hidden = None
    rng = np.random.default_rng(1)
    for t in range(4):
        bad = stub.StreamEpisode()
        await bad.write(start_msg(LSTM, 2))
        await bad.write(_step(_with_nan(GOOD_LSTM)))
        obs = obs_batch(LSTM, 2, rng)
        await good.write(_step(obs))
        response = (await good.read()).step
        expected = local_models[LSTM].predict(torch.from_numpy(obs), hidden=hidden)
        hidden = expected.hidden
        np.testing.assert_allclose(dec(response.q_values), expected.q_values.numpy(), rtol=1e-5, atol=1e-6)
        assert response.step_index == t
        responses, error = await read_to_end(bad)
        assert responses[0].WhichOneof("kind") == "started" and error.code() == IA
        assert_ended(responses[-1], "bad_request", IA, "BAD_TENSOR")
    await good.done_writing()
    assert await good.code() == grpc.StatusCode.OK
    assert len(server.streams) == 0
