"""Prometheus metrics of one server, in their own registry (so several servers can live in one process).

| metric                                  | type      | labels         |
|-----------------------------------------|-----------|----------------|
| hamlet_requests_total                   | counter   | method, code   |
| hamlet_request_errors_total             | counter   | method, code   |
| hamlet_request_latency_seconds          | histogram | method         |
| hamlet_batch_size                       | histogram | model          |
| hamlet_batch_queue_seconds              | histogram | model          |
| hamlet_forward_seconds                  | histogram | model          |
| hamlet_stream_step_seconds              | histogram | model          |
| hamlet_active_sessions                  | gauge     |                |
| hamlet_stream_ends_total                | counter   | reason         |
| hamlet_loaded_model_versions            | gauge     |                |
| hamlet_model_load_failures_total        | counter   | model, reason  |
| hamlet_inflight_bytes                   | gauge     |                |
| hamlet_unstarted_streams                | gauge     |                |
| hamlet_watchers                         | gauge     |                |

A refused file is counted once per change of the file (it is not read again until it changes).
`StreamEpisode` is counted once per stream (its final code) and its latency is per step, under the method
label `StreamEpisode.step`; `hamlet_stream_step_seconds` is the same time by model.
`hamlet_batch_queue_seconds` is, per forward, the longest wait of a request in the batcher (its oldest item,
from submit to the start of the forward) and
`hamlet_forward_seconds` one batched forward (gather, network, scatter, copy to the host): their sum is most of
a step's server-side latency. The registry also carries prometheus_client's standard `process_*` (CPU, memory,
open files) and `python_*` (GC, interpreter) collectors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from hamlet_server.batcher import BatchStats
from hamlet_server.metrics_http import MetricsEndpoint

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (
    50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3, 3.2e-3, 6.4e-3, 12.8e-3, 25.6e-3, 51.2e-3, 0.1, 0.2, 0.5, 1, 2, 5,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ServerMetrics:
    """The metric objects; `serve(port, host)` exposes them over HTTP at /metrics (plain HTTP, no token: the
    server binds it to 127.0.0.1 unless --metrics-host says otherwise)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._batch_children: dict[str, tuple[Any, Any, Any]] = {}
        r = self.registry
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_*
            r.register(standard)
        self.requests = Counter("hamlet_requests", "RPCs finished, by method and status code",
                                ["method", "code"], registry=r)  # fmt: skip
        self.errors = Counter("hamlet_request_errors", "RPCs finished with a status other than OK",
                              ["method", "code"], registry=r)  # fmt: skip
        self.latency = Histogram("hamlet_request_latency_seconds", "Server-side latency per call or stream step",
                                 ["method"], buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_size = Histogram("hamlet_batch_size", "Rows per batched forward", ["model"],
                                    buckets=_BATCH_BUCKETS, registry=r)  # fmt: skip
        self.queue_time = Histogram("hamlet_batch_queue_seconds",
                                    "Longest wait of a request of each batched forward in the batcher", ["model"],
                                    buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.forward_time = Histogram("hamlet_forward_seconds", "Time of one batched forward", ["model"],
                                      buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.step_latency = Histogram("hamlet_stream_step_seconds", "Server-side latency of a stream step",
                                      ["model"], buckets=_LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.active_sessions = Gauge("hamlet_active_sessions", "Open StreamEpisode streams (started or not)",
                                     registry=r)  # fmt: skip
        self.stream_ends = Counter("hamlet_stream_ends", "StreamEpisode streams ended, by end reason",
                                   ["reason"], registry=r)  # fmt: skip
        self.loaded_versions = Gauge("hamlet_loaded_model_versions", "Model versions held in memory", registry=r)
        self.load_failures = Counter("hamlet_model_load_failures",
                                     "Checkpoint files not promoted: reason load_error (unreadable, non-finite "
                                     "weights, ...) or canary (non-finite outputs)",
                                     ["model", "reason"], registry=r)  # fmt: skip
        self.inflight_bytes = Gauge("hamlet_inflight_bytes", "Request bytes the calls and steps in progress hold "
                                    "against --max-inflight-mb", registry=r)  # fmt: skip
        self.unstarted_streams = Gauge("hamlet_unstarted_streams", "Streams open without their EpisodeStart "
                                       "(bounded by --max-unstarted)", registry=r)  # fmt: skip
        self.watchers = Gauge("hamlet_watchers", "WatchEpisodes calls in progress (bounded by --max-watchers)",
                              registry=r)  # fmt: skip
        self._http: MetricsEndpoint | None = None

    def bind_gauges(self, sessions: Callable[[], float], loaded: Callable[[], float]) -> None:
        """Read the two gauges from live objects at scrape time."""
        self.active_sessions.set_function(sessions)
        self.loaded_versions.set_function(loaded)

    def observe_batch(self, model: str, stats: BatchStats) -> None:
        """One forward of ``model``'s batcher: its rows, its time, and the longest wait of a request before it."""
        children = self._batch_children.get(model)
        if children is None:  # looked up once per model: labels() costs ~3 us a call on the forward path
            children = (self.batch_size.labels(model), self.forward_time.labels(model), self.queue_time.labels(model))
            self._batch_children[model] = children
        rows, forward, queue = children
        rows.observe(stats.rows)
        forward.observe(stats.forward_seconds)
        queue.observe(stats.longest_wait_seconds)

    def bind_limits(
        self, inflight: Callable[[], float], unstarted: Callable[[], float], watchers: Callable[[], float]
    ) -> None:
        """Read what the hoarding limits count from live objects at scrape time."""
        self.inflight_bytes.set_function(inflight)
        self.unstarted_streams.set_function(unstarted)
        self.watchers.set_function(watchers)

    def record(self, method: str, code: str) -> None:
        self.requests.labels(method, code).inc()
        if code != "OK":
            self.errors.labels(method, code).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP endpoint (one thread, bounded connections, timed-out reads: see
        `hamlet_server.metrics_http`); returns the bound port."""
        endpoint = MetricsEndpoint(self.registry)
        bound = endpoint.start(host, port)
        self._http = endpoint
        return bound

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) the /metrics endpoint listens on; None when it is not serving."""
        return None if self._http is None else self._http.address

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None
