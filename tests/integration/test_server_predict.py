"""Predict, ListModels and GetModelMetadata against a real server: exact equality with HamletModel.predict."""

from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest
import torch
from server_helpers import LSTM, MLP, dec, enc, obs_batch, start_msg, step_msg

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import model_pb2, tensor_pb2


@pytest.mark.parametrize("kind", [MLP, LSTM])
async def test_predict_returns_exactly_the_local_q_values(stub, local_models, kind):
    obs = obs_batch(kind, 5, np.random.default_rng(0))
    response = await stub.Predict(pb.PredictRequest(model=kind, observations=enc(obs)))
    expected = local_models[kind].predict(torch.from_numpy(obs))
    assert response.model == kind and response.version == 0
    np.testing.assert_array_equal(dec(response.q_values), expected.q_values.numpy())
    assert list(response.actions) == expected.actions.tolist()
    assert response.HasField("hidden") == (kind == LSTM)
    if kind == LSTM:
        np.testing.assert_array_equal(dec(response.hidden.h), expected.hidden[0].numpy())
        np.testing.assert_array_equal(dec(response.hidden.c), expected.hidden[1].numpy())


async def test_predict_carries_explicit_hidden_state_in_and_out(stub, local_models):
    rng = np.random.default_rng(1)
    model = local_models[LSTM]
    hidden = None
    wire_hidden = None
    for _ in range(3):
        obs = obs_batch(LSTM, 2, rng)
        request = pb.PredictRequest(model=LSTM, observations=enc(obs))
        if wire_hidden is not None:
            request.hidden.CopyFrom(wire_hidden)
        response = await stub.Predict(request)
        expected = model.predict(torch.from_numpy(obs), hidden=hidden)
        np.testing.assert_array_equal(dec(response.q_values), expected.q_values.numpy())
        hidden, wire_hidden = expected.hidden, response.hidden


async def test_seeded_epsilon_and_mask_match_local_predict(stub, local_models):
    obs = obs_batch(MLP, 64, np.random.default_rng(2))
    mask = np.ones((64, 6), dtype=bool)
    mask[:, 0] = False
    mask[::2, 3] = False
    response = await stub.Predict(
        pb.PredictRequest(model=MLP, observations=enc(obs), epsilon=0.5, seed=1234, action_mask=enc(mask))
    )
    gen = torch.Generator().manual_seed(1234)
    expected = local_models[MLP].predict(torch.from_numpy(obs), epsilon=0.5, action_mask=mask, generator=gen)
    actions = np.array(response.actions)
    assert actions.tolist() == expected.actions.tolist()
    assert mask[np.arange(64), actions].all()


async def test_onnx_backend_draws_seeded_exploration_as_onnx_model_predict_does(server_factory):
    """The onnx backend explores with a numpy generator: a seeded Predict chooses what `OnnxModel.predict` (and
    the SDK's local policy) chooses with that seed on the same session; the torch backend keeps HamletModel's."""
    pytest.importorskip("onnxruntime")
    server = await server_factory(backend="onnx")
    obs = obs_batch(MLP, 64, np.random.default_rng(2))
    mask = np.ones((64, 6), dtype=bool)
    mask[:, 0] = False
    mask[::2, 3] = False
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = await pb_grpc.InferenceServiceStub(channel).Predict(
            pb.PredictRequest(model=MLP, observations=enc(obs), epsilon=0.5, seed=1234, action_mask=enc(mask))
        )
    onnx_model = server.repository.latest(MLP).model.onnx_model
    expected = onnx_model.predict(obs, epsilon=0.5, action_mask=mask, generator=1234)
    assert list(response.actions) == expected.actions.tolist()
    np.testing.assert_array_equal(dec(response.q_values), expected.q_values)


async def test_default_model_is_used_when_none_is_named(stub, local_models):
    listed = await stub.ListModels(pb.ListModelsRequest())
    assert listed.default_model == LSTM  # first name in sorted order
    obs = obs_batch(LSTM, 1, np.random.default_rng(3))
    response = await stub.Predict(pb.PredictRequest(observations=enc(obs)))
    assert response.model == LSTM


async def test_list_models_names_versions_and_types(stub):
    listed = await stub.ListModels(pb.ListModelsRequest())
    by_name = {m.name: m for m in listed.models}
    assert set(by_name) == {MLP, LSTM}
    assert list(by_name[MLP].versions) == [0] and list(by_name[MLP].loaded_versions) == [0]
    assert by_name[MLP].network_type == model_pb2.NETWORK_TYPE_SIMPLE
    assert by_name[LSTM].network_type == model_pb2.NETWORK_TYPE_RECURRENT
    assert (by_name[LSTM].obs_dim, by_name[LSTM].action_dim) == (54, 6)


async def test_metadata_carries_the_checkpoint_metadata(stub, model_dir, local_models):
    response = await stub.GetModelMetadata(pb.GetModelMetadataRequest(model=LSTM))
    meta = response.metadata
    path = model_dir / LSTM / "model_ep00000.pt"
    assert meta.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta.format_version == "inference_v1"
    assert meta.network_type == model_pb2.NETWORK_TYPE_RECURRENT
    assert (meta.obs_dim, meta.action_dim, meta.hidden_dim) == (54, 6, 256)
    assert meta.num_parameters == local_models[LSTM].num_parameters == 636_486
    assert meta.episode == 0 and meta.version == 0
    assert meta.source_file == "model_ep00000.pt"
    assert meta.extra["untrained"] == "true"
    assert meta.created_at


async def test_q_values_travel_as_little_endian_float32(stub):
    obs = obs_batch(MLP, 3, np.random.default_rng(4))
    response = await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(obs)))
    assert response.q_values.dtype == tensor_pb2.DATA_TYPE_FLOAT32
    assert list(response.q_values.shape) == [3, 6]
    assert len(response.q_values.data) == 3 * 6 * 4


async def test_onnx_backend_serves_the_same_q_values_up_to_float_rounding(server_factory, local_models):
    pytest.importorskip("onnxruntime")
    server = await server_factory(backend="onnx")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        meta = (await stub.GetModelMetadata(pb.GetModelMetadataRequest(model=LSTM))).metadata
        assert meta.extra["backend"] == "onnxruntime"
        rng = np.random.default_rng(9)
        call = stub.StreamEpisode()
        await call.write(start_msg(LSTM, 2))
        await call.read()
        hidden = None
        for _ in range(4):
            obs = obs_batch(LSTM, 2, rng)
            await call.write(step_msg(obs))
            response = (await call.read()).step
            expected = local_models[LSTM].predict(torch.from_numpy(obs), hidden=hidden)
            hidden = expected.hidden
            np.testing.assert_allclose(dec(response.q_values), expected.q_values.numpy(), rtol=1e-4, atol=1e-5)
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
