"""Optional OpenTelemetry tracing of the server's calls: off unless `--tracing otlp|console` is set.

Needs the `otel` extra (``pip install 'hamlet-server[otel]'``: opentelemetry-sdk and the OTLP gRPC exporter).
When it is on:

- every `hamlet.v1` call is a SERVER span named after its method (``hamlet.v1.InferenceService/Predict``), a
  child of the caller's span when the call carries W3C ``traceparent`` metadata. It ends with the call: a
  stream's span covers the whole episode. Its attributes are the standard ``rpc.*`` ones, the status code, and
  what the call bound for its log lines (`hamlet_server.logs`): session, model, version, peer;
- one stream step in every ``--trace-step-every`` (counted per stream) is a child span
  ``StreamEpisode.step`` with its step index, so a long episode does not flood the collector;
- ``--trace-sample RATIO`` samples new traces (a caller's sampled flag is followed).

The exporter follows the standard environment: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (default
``http://localhost:4317``), ``OTEL_EXPORTER_OTLP_INSECURE``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_SERVICE_NAME`` (default ``hamlet-server``). Spans are exported in batches off the serving path and
flushed when the server drains. With tracing off nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc

from hamlet_server.logs import log_context

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

__all__ = ["TRACING_MODES", "CallTracing", "TracingInterceptor", "make_tracing"]

TRACING_MODES = ("off", "otlp", "console")
_TRACED_PREFIX = "/hamlet.v1."


class CallTracing:
    """A tracer and its provider, with the two kinds of span the server makes."""

    def __init__(self, provider: TracerProvider, step_every: int) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("hamlet_server")
        self.step_every = step_every

    @contextmanager
    def call_span(self, method: str, metadata: Any) -> Iterator[Span]:
        """The span of one call to ``method`` (``/package.Service/Method``), current while the call runs."""
        from opentelemetry import propagate, trace

        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        service, _, name = method.lstrip("/").partition("/")
        with self.tracer.start_as_current_span(
            method.lstrip("/"),
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def step(self, step_index: int, began: float, elapsed: float) -> None:
        """A span for a stream step that began at ``began`` (time.perf_counter) and took ``elapsed`` s, if
        it is one of every ``step_every``; its parent is the stream's span (current in the stream's task)."""
        if self.step_every <= 0 or step_index % self.step_every:
            return
        start_ns = time.time_ns() - int((time.perf_counter() - began) * 1e9)
        end_ns = start_ns + int(elapsed * 1e9)
        span = self.tracer.start_span("StreamEpisode.step", start_time=start_ns)
        span.set_attribute("hamlet.step_index", step_index)
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Export what is buffered and stop."""
        self.provider.shutdown()


def make_tracing(mode: str, sample: float, step_every: int, exporter: SpanExporter | None = None) -> CallTracing:
    """Tracing for ``mode`` (otlp or console), or into ``exporter`` (tests). Raises ValueError naming the extra
    to install when OpenTelemetry is missing."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ValueError(
            f"--tracing {mode}: OpenTelemetry is not installed; pip install 'hamlet-server[otel]' (or leave "
            "--tracing off)"
        ) from None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "hamlet-server")})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sample)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif mode == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    return CallTracing(provider, step_every)


def _otlp_exporter() -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ValueError(
            "--tracing otlp: the OTLP exporter is not installed; pip install 'hamlet-server[otel]'"
        ) from None
    return OTLPSpanExporter()  # endpoint, TLS and headers from the OTEL_EXPORTER_OTLP_* environment


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc, unused-ignore]
    """Wraps each `hamlet.v1` method handler in its call span (health and reflection are not traced)."""

    def __init__(self, tracing: CallTracing) -> None:
        self._tracing = tracing

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or not method.startswith(_TRACED_PREFIX):
            return handler
        return _traced(handler, self._tracing, method, handler_call_details.invocation_metadata)


def _traced(
    handler: grpc.RpcMethodHandler[Any, Any], tracing: CallTracing, method: str, metadata: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` whose behaviour runs inside the call's span."""
    kind = (
        ("stream" if handler.request_streaming else "unary")
        + "_"
        + ("stream" if handler.response_streaming else "unary")
    )
    behavior = getattr(handler, kind)

    if inspect.isasyncgenfunction(behavior):

        async def wrapped_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            with tracing.call_span(method, metadata) as span:
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    _finish(span, context)

        new_behavior: Callable[..., Any] = wrapped_stream
    else:

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with tracing.call_span(method, metadata) as span:
                try:
                    return await behavior(request, context)
                finally:
                    _finish(span, context)

        new_behavior = wrapped
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(  # type: ignore[no-any-return]
        new_behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def _finish(span: Span, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """The call's status code and what it bound for its log lines, on its span."""
    from opentelemetry.trace import Status, StatusCode

    code = context.code() or grpc.StatusCode.OK
    if isinstance(code, int):  # grpc.aio reports the code as its number when a handler set it
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    for key, value in log_context().items():
        span.set_attribute(f"hamlet.{key}", value)
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
