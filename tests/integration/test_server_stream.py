"""StreamEpisode against a real server: server-held LSTM state equals a local rollout, streams never mix,
state is freed on cancel/idle, capacity is enforced, and hot reload keeps running streams on their version."""

from __future__ import annotations

import asyncio
import shutil

import grpc
import numpy as np
import pytest
import torch
from server_helpers import LSTM, MLP, assert_ended, dec, obs_batch, read_to_end, start_msg, step_msg, write_model

from hamlet_client.proto import inference_service_pb2 as pb


async def _wait_for(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _open(stub, model, num_envs, **kw):
    call = stub.StreamEpisode()
    await call.write(start_msg(model, num_envs, **kw))
    started = await call.read()
    assert started.WhichOneof("kind") == "started"
    return call, started.started


async def test_streamed_recurrent_episode_equals_local_rollout_exactly(stub, local_models):
    model = local_models[LSTM]
    rng = np.random.default_rng(0)
    num_envs = 3
    call, started = await _open(stub, LSTM, num_envs, epsilon=0.3, seed=7)
    assert started.recurrent and started.num_envs == num_envs and started.version == 0
    gen = torch.Generator().manual_seed(7)
    hidden = None
    for t in range(12):
        obs = obs_batch(LSTM, num_envs, rng)
        reset = [t == 5, False, t == 9]
        if hidden is not None and any(reset):
            keep = torch.tensor([not r for r in reset], dtype=torch.float32).view(1, -1, 1)
            hidden = (hidden[0] * keep, hidden[1] * keep)
        await call.write(step_msg(obs, reset))
        response = (await call.read()).step
        expected = model.predict(torch.from_numpy(obs), hidden=hidden, epsilon=0.3, generator=gen)
        hidden = expected.hidden
        assert response.step_index == t and response.version == 0 and response.model == LSTM
        np.testing.assert_array_equal(dec(response.q_values), expected.q_values.numpy())
        assert list(response.actions) == expected.actions.tolist()
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_simple_model_streams_too(stub, local_models):
    call, started = await _open(stub, MLP, 2)
    assert not started.recurrent
    obs = obs_batch(MLP, 2, np.random.default_rng(1))
    await call.write(step_msg(obs))
    response = (await call.read()).step
    np.testing.assert_array_equal(dec(response.q_values), local_models[MLP].predict(torch.from_numpy(obs)).q_values)
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_concurrent_streams_never_mix_state(stub, server, local_models):
    model = local_models[LSTM]
    rng = np.random.default_rng(2)
    streams = [await _open(stub, LSTM, n) for n in (1, 4, 2)]
    hiddens = [None] * len(streams)
    for _ in range(8):
        batches = [obs_batch(LSTM, s.num_envs, rng) for _, s in streams]
        for (call, _), obs in zip(streams, batches, strict=True):
            await call.write(step_msg(obs))  # all three in flight together: batched into one forward
        responses = [(await call.read()).step for call, _ in streams]
        for i, (obs, response) in enumerate(zip(batches, responses, strict=True)):
            expected = model.predict(torch.from_numpy(obs), hidden=hiddens[i])
            hiddens[i] = expected.hidden
            # batched with other streams the forward's batch size differs: equal up to float rounding
            np.testing.assert_allclose(dec(response.q_values), expected.q_values.numpy(), rtol=1e-5, atol=1e-6)
    assert len(server.streams) == 3
    for call, _ in streams:
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    assert len(server.streams) == 0


async def test_cancelled_stream_frees_its_state(stub, server):
    call, _ = await _open(stub, LSTM, 4)
    await call.write(step_msg(obs_batch(LSTM, 4, np.random.default_rng(3))))
    await call.read()
    served = server.repository.latest(LSTM)
    assert len(server.streams) == 1 and served.slots.in_use == 4 and served.refs == 1
    call.cancel()
    await _wait_for(lambda: len(server.streams) == 0)
    assert served.slots.in_use == 0 and served.refs == 0


async def test_freed_rows_are_reused_from_zero_state(stub, local_models):
    """A new stream that inherits a closed stream's table rows starts from zeros, not from its state."""
    model = local_models[LSTM]
    rng = np.random.default_rng(4)
    first, _ = await _open(stub, LSTM, 2)
    for _ in range(3):
        await first.write(step_msg(obs_batch(LSTM, 2, rng)))
        await first.read()
    await first.done_writing()
    await first.code()
    second, _ = await _open(stub, LSTM, 2)
    obs = obs_batch(LSTM, 2, rng)
    await second.write(step_msg(obs))
    response = (await second.read()).step
    np.testing.assert_array_equal(dec(response.q_values), model.predict(torch.from_numpy(obs)).q_values.numpy())
    await second.done_writing()


async def test_stream_beyond_max_sessions_is_resource_exhausted(server_factory):
    server = await server_factory(max_sessions=2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc

        stub = pb_grpc.InferenceServiceStub(channel)
        held = [await _open(stub, LSTM, 1) for _ in range(2)]
        extra = stub.StreamEpisode()
        await extra.write(start_msg(LSTM, 1))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await extra.read()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "maximum of 2 streams" in info.value.details()
        await held[0][0].done_writing()
        await held[0][0].code()
        again, _ = await _open(stub, LSTM, 1)  # a freed place can be taken again
        for call in (again, held[1][0]):
            await call.done_writing()
            await call.code()
    assert len(server.streams) == 0


async def test_idle_stream_is_ended_and_freed_after_ttl(server_factory):
    server = await server_factory(session_ttl=0.3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc

        call, _ = await _open(pb_grpc.InferenceServiceStub(channel), LSTM, 2)
        assert len(server.streams) == 1
        responses, error = await read_to_end(call)  # the server ends the silent stream
        assert_ended(responses[-1], "idle_timeout", grpc.StatusCode.DEADLINE_EXCEEDED, "IDLE_TIMEOUT")
        assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "idle" in error.details() and "send a request" in error.details()
    assert len(server.streams) == 0


async def test_new_checkpoint_is_picked_up_while_running_stream_keeps_its_version(stub, server, model_dir):
    rng = np.random.default_rng(5)
    old_call, started = await _open(stub, LSTM, 1)
    assert started.version == 0
    await old_call.write(step_msg(obs_batch(LSTM, 1, rng)))
    await old_call.read()

    write_model(model_dir, LSTM, LSTM, 10, seed=99)
    await _wait_for(lambda: server.repository.latest(LSTM).version == 10)
    listed = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert listed[LSTM].latest_version == 10 and list(listed[LSTM].versions) == [0, 10]
    assert list(listed[LSTM].loaded_versions) == [0, 10]  # 0 is still used by the running stream

    await old_call.write(step_msg(obs_batch(LSTM, 1, rng)))
    assert (await old_call.read()).step.version == 0
    new_call, new_started = await _open(stub, LSTM, 1)
    assert new_started.version == 10
    await new_call.write(step_msg(obs_batch(LSTM, 1, rng)))
    assert (await new_call.read()).step.version == 10
    predicted = await stub.Predict(
        pb.PredictRequest(model=LSTM, observations=step_msg(obs_batch(LSTM, 1, rng)).step.observations)
    )
    assert predicted.version == 10

    await old_call.done_writing()
    await old_call.code()
    await _wait_for(lambda: server.repository.loaded_versions(LSTM) == [10])  # 0 unloaded: nobody uses it
    await new_call.done_writing()
    await new_call.code()


async def test_broken_checkpoint_is_skipped_and_previous_version_keeps_serving(stub, server, model_dir):
    bad = model_dir / LSTM / "model_ep00020.pt"
    bad.write_bytes(b"not a checkpoint at all")
    await _wait_for(lambda: server.metrics.load_failures.labels(LSTM, "load_error")._value.get() >= 1)
    assert server.repository.latest(LSTM).version == 0
    response = await stub.Predict(
        pb.PredictRequest(
            model=LSTM, observations=step_msg(obs_batch(LSTM, 1, np.random.default_rng(6))).step.observations
        )
    )
    assert response.version == 0
    shutil.copy(model_dir / LSTM / "model_ep00000.pt", bad)  # fixed in place: retried and loaded
    await _wait_for(lambda: server.repository.latest(LSTM).version == 20)


async def test_explicit_older_version_is_served_on_demand(stub, server, model_dir):
    write_model(model_dir, MLP, MLP, 3, seed=5)
    await _wait_for(lambda: server.repository.latest(MLP).version == 3)
    await _wait_for(lambda: server.repository.loaded_versions(MLP) == [3])
    obs = step_msg(obs_batch(MLP, 1, np.random.default_rng(7))).step.observations
    response = await stub.Predict(pb.PredictRequest(model=MLP, version=0, observations=obs))
    assert response.version == 0
    call, started = await _open(stub, MLP, 1, version=0)
    assert started.version == 0
    await call.done_writing()
    await call.code()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_stream_on_cuda_matches_the_cpu_rollout(server_factory, local_models):
    server = await server_factory(device="cuda")
    assert server.repository.latest(LSTM).device.type == "cuda"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc

        call, _ = await _open(pb_grpc.InferenceServiceStub(channel), LSTM, 3)
        rng = np.random.default_rng(8)
        hidden = None
        for t in range(5):
            obs = obs_batch(LSTM, 3, rng)
            await call.write(step_msg(obs, [t == 3, False, False]))
            response = (await call.read()).step
            if t == 3:
                hidden = (hidden[0].clone(), hidden[1].clone())
                hidden[0][:, 0] = 0
                hidden[1][:, 0] = 0
            expected = local_models[LSTM].predict(torch.from_numpy(obs), hidden=hidden)
            hidden = expected.hidden
            np.testing.assert_allclose(dec(response.q_values), expected.q_values.numpy(), rtol=1e-4, atol=1e-5)
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_streams_cancelled_mid_step_leak_nothing(stub, server):
    """Many streams, cancelled at every stage (before start, after start, with a step in flight)."""
    rng = np.random.default_rng(9)
    calls = []
    for i in range(24):
        call = stub.StreamEpisode()
        if i % 3:
            await call.write(start_msg(LSTM if i % 2 else MLP, 1 + i % 4))
        if i % 3 == 2:
            kind = LSTM if i % 2 else MLP
            await call.write(step_msg(obs_batch(kind, 1 + i % 4, rng)))
        calls.append(call)
    await asyncio.sleep(0.05)
    for call in calls:
        call.cancel()
    await _wait_for(lambda: len(server.streams) == 0)
    for name in (LSTM, MLP):
        served = server.repository.latest(name)
        assert served.refs == 0 and served.slots.in_use == 0
    # and the server still serves exactly
    call, _ = await _open(stub, LSTM, 2)
    await call.write(step_msg(obs_batch(LSTM, 2, rng)))
    assert (await call.read()).step.step_index == 0
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
