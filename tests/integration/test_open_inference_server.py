"""--open-inference on a server in this process, through the server's own generated v2 stub: what tritonclient
cannot easily send (garbage bytes, methods we do not serve) and what a draining server answers. The exact
Q-values against tritonclient are in test_open_inference.py; here the reference is the local HamletModel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest
from server_helpers import LSTM, MLP

from hamlet_server._generated_v2.inference import grpc_service_pb2 as v2
from hamlet_server._generated_v2.inference import grpc_service_pb2_grpc as v2_grpc
from townlet.inference import HamletModel

SERVICE = "/inference.GRPCInferenceService/"


def _infer(model: str, obs: np.ndarray) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=model)
    request.inputs.add(name="observations", datatype="FP32", shape=list(obs.shape))
    request.raw_input_contents.append(obs.tobytes())
    return request


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code: grpc.StatusCode = caught.value.code()
    return code


async def test_model_infer_equals_the_local_model(server_factory: Callable[..., Any],
                                                  local_models: dict[str, HamletModel]) -> None:  # fmt: skip
    server = await server_factory(open_inference=True)
    obs = np.random.default_rng(1).random((5, 54), dtype=np.float32)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        out = await v2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_infer(LSTM, obs))
    expected = local_models[LSTM].predict(obs)
    q = np.frombuffer(out.raw_output_contents[0], "<f4").reshape(5, 6)
    assert np.array_equal(q, expected.q_values)  # numpy in, numpy out
    h = np.frombuffer(out.raw_output_contents[2], "<f4").reshape(5, -1)
    assert np.array_equal(h, expected.hidden[0][0])
    text = generate_latest(server.metrics.registry).decode()
    assert 'hamlet_requests_total{code="OK",method="v2.ModelInfer"} 1.0' in text
    assert 'hamlet_request_latency_seconds_count{method="v2.ModelInfer"} 1.0' in text


async def test_garbage_bytes_and_methods_not_served(server_factory: Callable[..., Any]) -> None:
    server = await server_factory(open_inference=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        garbage = channel.unary_unary(SERVICE + "ModelInfer")(b"\xff\xff\xff")
        assert await _code(garbage) == grpc.StatusCode.INVALID_ARGUMENT
        model_config = channel.unary_unary(SERVICE + "ModelConfig")(b"")
        assert await _code(model_config) == grpc.StatusCode.UNIMPLEMENTED
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        assert await _code(stub.ModelMetadata(v2.ModelMetadataRequest(name="nope"))) == grpc.StatusCode.NOT_FOUND
        bad_version = stub.ModelMetadata(v2.ModelMetadataRequest(name=MLP, version="latest"))
        assert await _code(bad_version) == grpc.StatusCode.INVALID_ARGUMENT
        meta = await stub.ServerMetadata(v2.ServerMetadataRequest())
        assert meta.name == "hamlet-server" and meta.version
    text = generate_latest(server.metrics.registry).decode()
    assert 'hamlet_request_errors_total{code="NOT_FOUND",method="v2.ModelMetadata"} 1.0' in text
    assert 'hamlet_request_errors_total{code="INVALID_ARGUMENT",method="v2.ModelInfer"} 1.0' in text


async def test_a_draining_server_is_not_ready_and_refuses_inference(server_factory: Callable[..., Any]) -> None:
    server = await server_factory(open_inference=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerReady(v2.ServerReadyRequest())).ready
        assert (await stub.ModelReady(v2.ModelReadyRequest(name=MLP, version="0"))).ready
        server.servicer.draining = True  # the first step of drain(): what a request sees meanwhile
        assert not (await stub.ServerReady(v2.ServerReadyRequest())).ready
        assert not (await stub.ModelReady(v2.ModelReadyRequest(name=MLP))).ready
        infer = stub.ModelInfer(_infer(MLP, np.zeros((1, 91), np.float32)))
        assert await _code(infer) == grpc.StatusCode.UNAVAILABLE
        assert (await stub.ServerLive(v2.ServerLiveRequest())).live
