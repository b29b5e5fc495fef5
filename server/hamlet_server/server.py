"""HamletServer: builds the grpc.aio server with its parts, starts it, drains it.

server = HamletServer(config)
port = await server.start()          # loads the repository, binds, starts polling
...
await server.drain()                 # NOT_SERVING, refuse new work, finish in-flight calls and steps, stop

A drain refuses before it stops. gRPC's stop kills every call that has reached the server but not yet its
handler (queued in gRPC while the event loop is busy): their clients see a bare CANCELLED, which nothing
retries. So the drain first refuses new work with UNAVAILABLE (reason SERVER_DRAINING, which clients retry
on another replica) and reports NOT_SERVING (balancing clients stop sending here), and stops only once no
call has arrived for `QUIET_PERIOD` seconds (or half the grace has passed); calls in flight finish within
the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_server.backends import load_backend, resolve_backend, serving_device
from hamlet_server.config import ServerConfig
from hamlet_server.health import DrainingHealthServicer
from hamlet_server.metrics import ServerMetrics
from hamlet_server.repository import ModelRepository
from hamlet_server.security import BearerTokenInterceptor, read_token, server_credentials
from hamlet_server.servicer import InferenceServicer, add_to_server
from hamlet_server.snapshot_keys import read_snapshot_keys
from hamlet_server.startup import bind_grpc, grpc_address, serve_metrics
from hamlet_server.streams import Ending, StreamTable
from hamlet_server.tracing import CallTracing, TracingInterceptor, make_tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["LIVENESS_NAME", "QUIET_PERIOD", "SERVICE_NAME", "HamletServer", "model_health_name"]

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
LIVENESS_NAME = "hamlet.v1.Liveness"
"""Health name that is SERVING while the process answers, servable models or not (for liveness probes: a pod
with nothing servable yet must not be restarted, only kept out of traffic by readiness on ""). NOT_SERVING from
the start of a drain: the SDK's balancing channels watch it to leave a draining replica."""
QUIET_PERIOD = 0.1
"""Seconds without a new call after which a drain stops the gRPC server (see the module doc)."""


def model_health_name(model: str) -> str:
    """The grpc.health.v1 service name that follows one model: SERVING while it has a servable version."""
    return f"{SERVICE_NAME}/{model}"


def _grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Keepalive: ping idle connections every 60 s, drop them if the ping is not answered in 20 s; accept
        # client pings no more often than every 10 s (also without active calls), so dead peers free their streams.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", int(config.reuse_port)),  # off unless --workers shares the port on purpose
    ]


def _set_torch_threads(backend: str, threads: int) -> None:
    """torch.set_num_threads in the calling thread, for the torch backend (the onnx one never imports torch)."""
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)


class HamletServer:
    """One serving process: repository, sessions, batchers, servicer, health, reflection, metrics."""

    def __init__(self, config: ServerConfig, *, span_exporter: SpanExporter | None = None) -> None:
        """``span_exporter`` receives the spans instead of ``--tracing``'s exporter (tests)."""
        self.config = config
        # auto -> cuda when torch sees one (the model layer's rule); the onnx backend runs on the CPU, and
        # decides that without importing torch
        onnx_auto = config.backend == "onnx" and config.device == "auto"
        self.device = "cpu" if onnx_auto else serving_device(config.device)
        self.backend = resolve_backend(config.backend, self.device)
        if self.backend == "onnx" and self.device != "cpu":
            raise ValueError(f"--backend onnx runs on the CPU; got --device {config.device} (resolved {self.device})")
        self.metrics = ServerMetrics()
        self.streams = StreamTable(
            config.max_sessions, ttl=config.session_ttl, start_timeout=config.start_timeout,
            max_slots=config.max_slots, max_unstarted=config.max_unstarted,
        )  # fmt: skip
        # torch's intra-op thread count is per OS thread (OpenMP): set it in the worker that runs the forwards
        # (torch backend only: the onnx backend sets its session's threads, and may run without torch).
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="hamlet-forward",
            initializer=functools.partial(_set_torch_threads, self.backend, config.threads),
        )
        self.repository = ModelRepository(
            config.models, self.device, self._executor if config.forward_thread else None,
            max_batch=config.max_batch, max_delay_us=config.max_delay_us, inline_rows=config.inline_rows,
            default_model=config.default_model, prefer_onnx=self.backend == "onnx",
            loader=functools.partial(load_backend, backend=self.backend, threads=config.threads),
            on_batch=self.metrics.observe_batch,
            on_load_failure=lambda name, reason: self.metrics.load_failures.labels(name, reason).inc(),
        )  # fmt: skip
        self.metrics.bind_gauges(lambda: len(self.streams), self.repository.loaded_count)
        self.servicer = InferenceServicer(self.repository, self.streams, config, self.metrics, backend=self.backend)
        self.tracing: CallTracing | None = None
        if config.tracing != "off" or span_exporter is not None:
            self.tracing = make_tracing(config.tracing, config.trace_sample, config.trace_step_every, span_exporter)
            self.servicer.step_tracer = self.tracing.step
        self.metrics.bind_limits(
            lambda: self.servicer.budget.in_use, lambda: self.streams.unstarted, lambda: len(self.servicer.watch)
        )
        self.health = DrainingHealthServicer()
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0
        self.metrics_port = 0
        self._stopped = asyncio.Event()
        self._health_names: set[str] = set()

    async def start(self) -> int:
        """Load the models, bind, serve. Returns the gRPC port."""
        _set_torch_threads(self.backend, self.config.threads)
        await self.repository.refresh()
        names = self.repository.names()
        if not names:
            log.warning("no servable model under %s: health is NOT_SERVING until a file loads and passes the "
                        "canary; new files are picked up as they appear", self.config.models)  # fmt: skip
        token = read_token(self.config.token_file)
        self.servicer.snapshot_keys = read_snapshot_keys(self.config.snapshot_key_file)
        if self.config.allow_unsigned_snapshots:
            log.warning(
                "--allow-unsigned-snapshots: any client can resume an episode from a state it made up "
                "(hidden state, epsilon, generator, step index); use --snapshot-key-file beyond local use"
            )
        credentials = server_credentials(self.config.tls_cert, self.config.tls_key)
        interceptors: list[grpc.aio.ServerInterceptor] = [BearerTokenInterceptor(token)] if token else []
        if self.tracing is not None:  # outermost: a refused call is traced too
            interceptors.insert(0, TracingInterceptor(self.tracing))
        server = grpc.aio.server(options=_grpc_options(self.config), interceptors=interceptors)
        add_to_server(self.servicer, server)
        services = [SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME]
        if self.config.open_inference:  # the v2 stubs are imported only when asked for
            from hamlet_server.open_inference import add_open_inference

            services.append(add_open_inference(self.servicer, server))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(services, server)
        self.port = bind_grpc(server, self.config.host, self.config.port, credentials)
        if self.config.metrics_port:  # before the gRPC server starts, so a taken port leaves nothing running
            self.metrics_port = serve_metrics(self.metrics, self.config.metrics_host, self.config.metrics_port)
        await self.health.set(LIVENESS_NAME, health_pb2.HealthCheckResponse.SERVING)  # before the first watch
        await self._update_health()
        await server.start()
        self._server = server
        loop = asyncio.get_running_loop()
        if self.config.poll_interval > 0:
            self._tasks.append(loop.create_task(self._poll(), name="hamlet-poll"))
        self._tasks.append(loop.create_task(self._sweep(), name="hamlet-sweep"))
        log.info(
            "serving %s on %s:%d (device %s, backend %s, %d thread(s), max batch %d, max delay %d us)%s",
            ", ".join(f"{n} v{self.repository.latest(n).version}" for n in names) or "no models",
            self.config.host, self.port, self.device, self.backend, self.config.threads, self.config.max_batch,
            self.config.max_delay_us, self._metrics_note(),
        )  # fmt: skip
        return self.port

    def _metrics_note(self) -> str:
        if not self.metrics_port:
            return ""
        return f"; metrics on http://{grpc_address(self.config.metrics_host, self.metrics_port)}/metrics"

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                await self.repository.refresh()
                await self._update_health()
            except Exception:
                log.exception("polling the model repository failed; retrying at the next interval")

    async def _update_health(self) -> None:
        """Health says what is servable: "" and the service are SERVING while at least one model has a
        servable version; `model_health_name(m)` follows model m (NOT_SERVING once it has none)."""
        if self.servicer.draining:
            return
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        names = set(self.repository.names())
        known = names | self._health_names | set(self.repository.names_on_disk())
        for name in sorted(known):
            await self.health.set(model_health_name(name), serving if name in names else not_serving)
        self._health_names = known
        overall = serving if names else not_serving
        for service in ("", SERVICE_NAME):
            await self.health.set(service, overall)

    async def _sweep(self) -> None:
        """End streams that broke a time limit (see `StreamTable.overdue`); their state is freed at once."""
        period = min(1.0, self.config.session_ttl / 4, self.config.start_timeout / 4)
        while True:
            await asyncio.sleep(period)
            self.streams.sweep()

    async def drain(self, grace: float | None = None) -> None:
        """Refuse new work, let in-flight calls and steps finish (at most `grace` seconds), shut everything down."""
        if self._server is None or self._stopped.is_set():
            return
        grace = self.config.grace if grace is None else grace
        deadline = time.monotonic() + grace
        log.info("draining: NOT_SERVING, refusing new work, finishing in-flight steps (grace %.1f s)", grace)
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        self.streams.end_all(Ending.draining())  # waiting ones at once, stepping ones after their step
        self.servicer.watch.close_all()
        self.servicer.trimmer.close()
        await self._until_quiet(time.monotonic() + grace / 2)
        await self._server.stop(max(deadline - time.monotonic(), 0.0))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.streams.free_all()
        await self.repository.close()
        self._executor.shutdown(wait=True)
        self.metrics.stop()
        if self.tracing is not None:
            self.tracing.shutdown()  # exports the spans still buffered
        self._stopped.set()
        log.info("stopped")

    async def _until_quiet(self, give_up_at: float) -> None:
        """Wait until no call has arrived for `QUIET_PERIOD` seconds, counted from now at the earliest (or until
        ``give_up_at``), so that no call is queued in gRPC when the server stops: calls queued while the loop was
        busy reach their handlers (and are refused) meanwhile."""
        began = time.monotonic()
        while (now := time.monotonic()) < give_up_at:
            quiet_for = now - max(self.servicer.last_arrival, began)
            if quiet_for >= QUIET_PERIOD:
                return
            await asyncio.sleep(min(QUIET_PERIOD - quiet_for, give_up_at - now))

    async def wait(self) -> None:
        """Wait until `drain()` has finished."""
        await self._stopped.wait()
