"""Operations: health (overall and per service, NOT_SERVING while draining), reflection, Prometheus metrics,
draining, and the CLI process answering SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from ports import free_port
from server_helpers import LSTM, MLP, assert_ended, cli_server, enc, obs_batch, read_to_end, start_msg, step_msg

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc

SERVICE = "hamlet.v1.InferenceService"
ROOT = Path(__file__).resolve().parents[2]


async def _health(channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def test_health_answers_overall_and_per_service(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
        assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _health(channel, "no.such.Service")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services_and_describes_the_contract(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
        names = {s.name for s in responses[0].list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
        assert responses[1].file_descriptor_response.file_descriptor_proto  # the .proto, serialised


async def test_metrics_endpoint_reports_requests_batches_sessions_versions(server_factory):
    server = await server_factory(metrics_port=free_port())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(obs_batch(MLP, 3, np.random.default_rng(0)))))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Predict(pb.PredictRequest(model="nope", observations=enc(np.zeros((1, 91), np.float32))))
        call = stub.StreamEpisode()
        await call.write(start_msg(LSTM, 2))
        await call.read()
        await call.write(step_msg(obs_batch(LSTM, 2, np.random.default_rng(1))))
        await call.read()
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        await call.done_writing()
        await call.code()
    assert 'hamlet_requests_total{code="OK",method="Predict"} 1.0' in text
    assert 'hamlet_request_errors_total{code="NOT_FOUND",method="Predict"} 1.0' in text
    assert 'hamlet_batch_size_count{model="mlp"} 1.0' in text
    assert 'hamlet_batch_size_sum{model="mlp"} 3.0' in text
    assert "hamlet_active_sessions 1.0" in text
    assert "hamlet_loaded_model_versions 2.0" in text
    assert 'hamlet_request_latency_seconds_count{method="StreamEpisode.step"} 1.0' in text
    # the batcher's two costs apart, the step latency by model, and the standard process and runtime metrics
    assert 'hamlet_batch_queue_seconds_count{model="mlp"} 1.0' in text
    assert 'hamlet_forward_seconds_count{model="mlp"} 1.0' in text
    assert 'hamlet_forward_seconds_count{model="lstm"} 1.0' in text
    assert 'hamlet_stream_step_seconds_count{model="lstm"} 1.0' in text
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    assert "python_gc_collections_total" in text and "python_info" in text


async def test_drain_goes_not_serving_refuses_new_work_and_ends_streams(server_factory):
    server = await server_factory()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.InferenceServiceStub(channel)
    call = stub.StreamEpisode()
    await call.write(start_msg(LSTM, 1))
    await call.read()
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    server.servicer.draining = True  # the first step of drain(): what a request sees meanwhile
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(np.zeros((1, 91), np.float32))))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    await server.drain(grace=2.0)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    responses, error = await read_to_end(call)  # the open stream was waiting for its client: ended
    assert_ended(responses[-1], "server_draining", grpc.StatusCode.UNAVAILABLE, "SERVER_DRAINING")
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert len(server.streams) == 0
    await channel.close()


@pytest.mark.slow  # starts the server's CLI process
def test_cli_serves_and_exits_cleanly_on_sigterm(model_dir):
    with cli_server(model_dir, "--threads", "1") as (proc, target):
        with grpc.insecure_channel(target) as channel:
            listed = pb_grpc.InferenceServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
        assert {m.name for m in listed.models} == {MLP, LSTM}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        stderr = proc.stderr.read()
    assert "loaded model_ep00000.pt" in stderr and "draining" in stderr and "stopped" in stderr


@pytest.mark.slow  # starts the server's CLI process
def test_cli_json_logs_carry_the_stream_session_model_and_peer(model_dir):
    with cli_server(model_dir, "--log-format", "json", "--log-level", "DEBUG") as (proc, target):
        requests = [start_msg(LSTM, 2), step_msg(obs_batch(LSTM, 2, np.random.default_rng(0)))]
        with grpc.insecure_channel(target) as channel:
            responses = list(pb_grpc.InferenceServiceStub(channel).StreamEpisode(iter(requests), timeout=20))
        session = responses[0].started.session_id
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        lines = proc.stderr.read().splitlines()
    entries = [json.loads(text) for text in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    ended = [e for e in entries if e["message"].startswith(f"stream {session} ended")]
    assert len(ended) == 1, lines
    assert ended[0]["session"] == session and ended[0]["model"] == LSTM and ended[0]["version"] == 0
    assert ended[0]["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert not any("session" in e for e in entries if "loaded" in e["message"])  # start-up lines carry none


@pytest.mark.slow  # starts the server's CLI process
def test_cli_rejects_a_missing_model_directory(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "not a directory" in proc.stderr


async def test_every_call_is_noted_on_arrival_so_a_drain_waits_for_quiet(server, stub):
    """The drain stops gRPC only once no call has arrived for a while (`last_arrival`): a method left out
    would be killed with a bare CANCELLED when it arrives during the drain."""
    calls = {
        "ListModels": lambda: stub.ListModels(pb.ListModelsRequest()),
        "Predict": lambda: stub.Predict(pb.PredictRequest(model=MLP, observations=enc(np.zeros((1, 91), np.float32)))),
        "GetModelArtifact": lambda: _drain_stream(stub.GetModelArtifact(pb.GetModelArtifactRequest(model=MLP))),
    }
    for name, call in calls.items():
        before = server.servicer.last_arrival
        await call()
        assert server.servicer.last_arrival > before, name


async def _drain_stream(call) -> None:
    async for _ in call:
        pass
