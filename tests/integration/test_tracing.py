"""OpenTelemetry tracing (--tracing): a span per hamlet.v1 call, joined to the caller's trace through W3C
``traceparent`` metadata, carrying the status code and the call's session/model/version/peer; one stream step
in every --trace-step-every gets a child span; and a real OTLP export from the CLI process to a collector."""

from __future__ import annotations

import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from server_helpers import LSTM, MLP, cli_server, enc, obs_batch, start_msg, step_msg

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_server.config import ServerConfig
from hamlet_server.server import HamletServer

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
async def traced(model_dir):
    exporter = InMemorySpanExporter()
    server = HamletServer(
        ServerConfig(models=model_dir, port=0, metrics_port=0, poll_interval=0, backend="torch", device="cpu",
                     trace_step_every=2),
        span_exporter=exporter,
    )  # fmt: skip
    await server.start()
    yield server, exporter
    await server.drain(grace=0.5)


async def test_predict_spans_join_the_callers_trace_and_carry_the_status(traced):
    server, exporter = traced
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        request = pb.PredictRequest(model=MLP, observations=enc(np.zeros((2, 91), np.float32)))
        await stub.Predict(request, metadata=[("traceparent", PARENT)])
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Predict(pb.PredictRequest(model="nope", observations=enc(np.zeros((1, 91), np.float32))))
    ok, failed = [s for s in exporter.get_finished_spans() if s.name == "hamlet.v1.InferenceService/Predict"]
    assert ok.kind == SpanKind.SERVER and format(ok.context.trace_id, "032x") == TRACE_ID
    assert format(ok.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert ok.attributes["rpc.method"] == "Predict" and ok.attributes["rpc.grpc.status_code"] == 0
    assert failed.parent is None and failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert failed.attributes["hamlet.peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))


async def test_a_stream_is_one_span_with_every_second_step_as_a_child(traced):
    server, exporter = traced
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(start_msg(LSTM, 2))
        session = (await call.read()).started.session_id
        for _ in range(5):  # steps 0..4: spans for 0, 2 and 4
            await call.write(step_msg(obs_batch(LSTM, 2, np.random.default_rng(0))))
            await call.read()
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    await server.drain(grace=0.5)  # the stream's span ends with the stream
    spans = exporter.get_finished_spans()
    (stream,) = [s for s in spans if s.name == "hamlet.v1.InferenceService/StreamEpisode"]
    assert stream.attributes["hamlet.session"] == session
    assert stream.attributes["hamlet.model"] == LSTM and stream.attributes["hamlet.version"] == 0
    steps = [s for s in spans if s.name == "StreamEpisode.step"]
    assert sorted(s.attributes["hamlet.step_index"] for s in steps) == [0, 2, 4]
    assert all(s.parent.span_id == stream.context.span_id for s in steps)
    assert all(stream.start_time <= s.start_time <= s.end_time <= stream.end_time for s in steps)


def _collector() -> tuple[grpc.Server, int, list[object], threading.Event]:
    """A minimal OTLP/gRPC trace collector: keeps every ExportTraceServiceRequest it receives."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[object] = []
    got = threading.Event()

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.append(request)
            got.set()
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, received, got


@pytest.mark.slow  # starts the server's CLI process
def test_cli_exports_spans_over_otlp_to_a_collector(model_dir):
    collector, port, received, got = _collector()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_SERVICE_NAME": "hamlet-test"}
    try:
        with cli_server(model_dir, "--tracing", "otlp", env=otel) as (proc, target):
            with grpc.insecure_channel(target) as channel:
                request = pb.PredictRequest(model=MLP, observations=enc(np.zeros((1, 91), np.float32)))
                pb_grpc.InferenceServiceStub(channel).Predict(request, timeout=20)
            proc.send_signal(signal.SIGTERM)  # the drain flushes the spans still buffered
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
        assert got.wait(10)
    finally:
        collector.stop(0)
    spans = [
        (resource.resource, span)
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in spans}
    assert "hamlet.v1.InferenceService/Predict" in names
    service = {a.value.string_value for r, _ in spans for a in r.attributes if a.key == "service.name"}
    assert service == {"hamlet-test"}


def test_tracing_without_opentelemetry_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_otel(name, *args, **kwargs):
        if name.startswith("opentelemetry"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    from hamlet_server.tracing import make_tracing

    with pytest.raises(ValueError, match=r"hamlet-server\[otel\]"):
        make_tracing("otlp", 1.0, 100)
