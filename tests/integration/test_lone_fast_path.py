"""The lone caller's fast path through a real server (issue 25): one stream's steps run at once in its own
task, with the same Q-values and hidden state as a local rollout; while a second stream shares the model
version, steps go through the batch queue again; `--lone-fast-path false` never takes it."""

from __future__ import annotations

import grpc
import numpy as np
import torch
from server_helpers import LSTM, dec, obs_batch, start_msg, step_msg

from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc


async def _open(stub: pb_grpc.InferenceServiceStub, num_envs: int):  # type: ignore[no-untyped-def]
    call = stub.StreamEpisode()
    await call.write(start_msg(LSTM, num_envs))
    assert (await call.read()).WhichOneof("kind") == "started"
    return call


async def _step(call, obs: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    await call.write(step_msg(obs))
    return dec((await call.read()).step.q_values)


async def test_one_stream_runs_alone_and_a_second_stream_brings_the_queue_back(server_factory, local_models) -> None:
    server = await server_factory()
    batcher = server.repository.latest(LSTM).batcher
    model, rng = local_models[LSTM], np.random.default_rng(0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        first = await _open(stub, 2)
        hidden = None
        for _ in range(5):
            obs = obs_batch(LSTM, 2, rng)
            expected = model.predict(torch.from_numpy(obs), hidden=hidden)
            hidden = expected.hidden
            np.testing.assert_array_equal(await _step(first, obs), expected.q_values.numpy())
        assert batcher.alone == 5 and batcher.batches == 5  # every step ran at once, none queued

        second = await _open(stub, 1)
        for _ in range(4):
            await _step(first, obs_batch(LSTM, 2, rng))
            await _step(second, obs_batch(LSTM, 1, rng))
        assert batcher.alone == 5 and batcher.batches == 13  # two streams on the version: all 8 steps queued

        await second.done_writing()
        assert await second.code() == grpc.StatusCode.OK
        obs = obs_batch(LSTM, 2, rng)
        q = await _step(first, obs)
        assert batcher.alone == 6  # alone again once the other stream ended
        assert np.isfinite(q).all() and q.shape == (2, model.action_dim)
        await first.done_writing()
        assert await first.code() == grpc.StatusCode.OK


async def test_the_fast_path_can_be_turned_off(server_factory) -> None:
    server = await server_factory(lone_fast_path=False)
    batcher = server.repository.latest(LSTM).batcher
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = await _open(pb_grpc.InferenceServiceStub(channel), 1)
        for _ in range(3):
            await _step(call, obs_batch(LSTM, 1, np.random.default_rng(1)))
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    assert batcher.alone == 0 and batcher.batches == 3
