"""ServerConfig: every setting of the server in one dataclass, each settable by flag or environment variable.

A field's `help` becomes its `--help` line; its environment variable is `HAMLET_<FIELD_NAME_UPPER>`
(e.g. `HAMLET_MODELS`, `HAMLET_MAX_SESSIONS`). Precedence: command-line flag > environment > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ServerConfig", "add_arguments", "config_from_args", "is_loopback", "parse_flags", "to_flags"]

ENV_PREFIX = "HAMLET_"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: ``localhost``, 127.0.0.0/8, ``::1`` (brackets allowed)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to any interface
        return False


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one `hamlet-server serve`."""

    models: Path = _opt(  # noqa: RUF009 (Path is immutable)
        Path("models"),
        "model repository: one sub-directory per model holding model_ep*.pt "
        "/ checkpoint_ep*.pt, or single <name>.pt files",
    )
    host: str = _opt(
        "127.0.0.1",
        "address to bind; one other than 127.x, ::1 or localhost (e.g. 0.0.0.0, ::) needs --token-file or "
        "--tls-cert/--tls-key, or --allow-insecure",
    )
    port: int = _opt(50051, "gRPC port (0 picks a free one)")
    device: str = _opt("auto", "torch device for the models: auto (cuda when present), cpu, cuda, cuda:N")
    backend: str = _opt(
        "auto",
        "auto (onnx on the CPU when onnxruntime is installed, else torch), torch (eager PyTorch on .pt files, any "
        "device; Q-values exactly HamletModel.predict's) or onnx (.onnx exports as they are, no torch needed; .pt "
        "files exported and verified at load; run by onnxruntime on the CPU: faster at small batch, within "
        "1e-5 + 1e-5 x |Q| of PyTorch)",
    )
    default_model: str = _opt("", "model used when a request names none (empty: the first name in sorted order)")
    max_sessions: int = _opt(1024, "most concurrent StreamEpisode streams; more get RESOURCE_EXHAUSTED")
    max_unstarted: int = _opt(
        256,
        "most streams open without their EpisodeStart (they count against --max-sessions too); past it the oldest "
        "of them is ended (RESOURCE_EXHAUSTED, UNSTARTED_LIMIT), so streams held open unstarted cannot starve "
        "clients that start at once",
    )
    max_inflight_mb: int = _opt(
        256,
        "most MiB of requests in progress, together: each Predict's message (counted before it is parsed) and "
        "each stream step's tensors; one that would pass it gets RESOURCE_EXHAUSTED (INFLIGHT_BUDGET)",
    )
    trim_after_mb: int = _opt(
        64,
        "after this many MiB of requests, once requests pause for 1 s, give the memory the allocator "
        "kept back to the system (glibc malloc_trim; 0: never)",
    )
    max_envs: int = _opt(1024, "most environments (num_envs) one stream may drive")
    max_predict_batch: int = _opt(4096, "most observations in one Predict call")
    session_ttl: float = _opt(
        300.0,
        "seconds a stream may go without a message either way (the client sends no request, or reads no "
        "response) before its state is freed and it ends with DEADLINE_EXCEEDED (reason idle_timeout)",
    )
    start_timeout: float = _opt(
        5.0, "seconds a new stream has to send its EpisodeStart; then it ends with DEADLINE_EXCEEDED (start_timeout)"
    )
    enable_watch: bool = _opt(
        False,
        "serve ListSessions and WatchEpisodes: anyone who may call the server (the token, when set) can then "
        "follow every running episode's observations, Q-values and actions; frames are dropped for a slow watcher",
    )
    open_inference: bool = _opt(
        False,
        "also serve the Open Inference Protocol v2 (KServe / Triton inference.GRPCInferenceService: ServerLive, "
        "ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) on the gRPC port, for tritonclient, "
        "perf_analyzer, KServe and Seldon clients; ModelInfer runs Predict (docs/SERVING.md)",
    )
    max_watchers: int = _opt(16, "most concurrent WatchEpisodes calls; more get RESOURCE_EXHAUSTED (WATCHER_LIMIT)")
    watch_fps: float = _opt(
        20.0, "most frames per second a watched stream sends its watchers; steps in between are not shown (0: all)"
    )
    watch_timeout: float = _opt(
        60.0,
        "seconds a WatchEpisodes call may go without delivering a frame (nothing to show, or a watcher that does "
        "not read) before it ends with DEADLINE_EXCEEDED (WATCH_IDLE)",
    )
    max_slots: int = _opt(
        65536,
        "most environment rows (the sum of num_envs of its open streams) per model version; more get "
        "RESOURCE_EXHAUSTED. Each row of a recurrent model holds (h, c): 2 KiB at H=256, so 65536 rows = 128 MiB",
    )
    max_batch: int = _opt(256, "most observations the batcher puts into one forward")
    max_delay_us: int = _opt(
        0, "microseconds the batcher waits for more work after the first item (0: take whatever is queued, never wait)"
    )
    forward_thread: bool = _opt(
        False,
        "run forwards on a worker thread (true: the event loop keeps decoding other requests meanwhile) or on "
        "the event loop itself (false, the default: one thread hop less per batch and no GIL contention; "
        "measured faster on 2 CPU cores at every load, see docs/PERFORMANCE.md; try true on a GPU box)",
    )
    inline_rows: int = _opt(
        1,
        "batches of at most this many rows run on the event loop even with --forward-thread: skips the thread "
        "hop that dominates a lone stream's latency (0: always use the worker thread)",
    )
    poll_interval: float = _opt(2.0, "seconds between scans of the model repository (0 disables hot reload)")
    metrics_port: int = _opt(9464, "Prometheus /metrics port (0 disables)")
    metrics_host: str = _opt(
        "127.0.0.1", "address /metrics binds (plain HTTP, no authentication: 0.0.0.0 only for a scraper you trust)"
    )
    threads: int = _opt(1, "torch.set_num_threads: 1 is fastest for small batches on small CPUs")
    workers: int = _opt(
        1,
        "server processes sharing --port through SO_REUSEPORT (Linux): each is a complete server with its own "
        "models, batcher and streams; the kernel spreads connections over them and a stream stays on the process "
        "its connection reached. /metrics of worker i is on --metrics-port + i (a range that must keep clear of "
        "--port). Pays only with a free core per worker (docs/PERFORMANCE.md); 1: this process serves",
    )
    reuse_port: bool = _opt(
        False,
        "bind --port with SO_REUSEPORT so several servers share it (--workers sets it for its processes); "
        "without it a taken port is refused",
    )
    token_file: str = _opt(
        "", "file holding the bearer token every hamlet.v1 call must send (empty: no authentication)"
    )
    snapshot_key_file: str = _opt(
        "",
        "file holding the keys that sign episode snapshots, one per line (16+ bytes each, e.g. `openssl rand -hex "
        "32`): the first signs, every line verifies (list the new key first during a rotation). The same file on "
        "every replica of a deployment; never the bearer token (clients hold that). Empty: snapshots are sent "
        "unsigned and resuming one is refused (FAILED_PRECONDITION) unless --allow-unsigned-snapshots",
    )
    allow_unsigned_snapshots: bool = _opt(
        False,
        "without --snapshot-key-file, resume episodes from unsigned snapshots (checksum only): any client can then "
        "set the (h, c), epsilon, generator and step index of the episode it resumes; for local use",
    )
    tls_cert: str = _opt("", "PEM certificate chain: serve TLS instead of plaintext (with --tls-key)")
    tls_key: str = _opt("", "PEM private key of --tls-cert")
    allow_insecure: bool = _opt(
        False,
        "serve plaintext without a token on a non-loopback --host on purpose (e.g. in a container reachable only "
        "through a port published on the host's loopback); without it such a bind is refused",
    )
    max_message_mb: int = _opt(
        16,
        "largest gRPC message accepted or sent, MiB; a response that would be larger is refused as "
        "INVALID_ARGUMENT (RESPONSE_TOO_LARGE) saying how many rows fit",
    )
    grace: float = _opt(10.0, "seconds SIGTERM/SIGINT waits for in-flight work before exiting")
    log_level: str = _opt("INFO", "logging level: DEBUG, INFO, WARNING, ERROR")
    tracing: str = _opt(
        "off",
        "OpenTelemetry spans for every hamlet.v1 call: off, otlp (to OTEL_EXPORTER_OTLP_ENDPOINT, default "
        "localhost:4317) or console; needs pip install 'hamlet-server[otel]'",
    )
    trace_sample: float = _opt(1.0, "fraction of new traces sampled, 0..1 (a caller's traceparent decision is kept)")
    trace_step_every: int = _opt(100, "with --tracing: one stream step in every N gets a span of its own (0: none)")
    log_format: str = _opt(
        "text",
        "text, or json: one JSON object a line (time, level, logger, message, and the call's session, model, "
        "version and peer where known) for a log pipeline",
    )

    def __post_init__(self) -> None:
        checks = [
            (self.max_sessions >= 1, "max_sessions must be >= 1"),
            (self.max_unstarted >= 1, "max_unstarted must be >= 1"),
            (self.max_inflight_mb >= 1, "max_inflight_mb must be >= 1"),
            (self.trim_after_mb >= 0, "trim_after_mb must be >= 0 (0: never)"),
            (self.max_envs >= 1, "max_envs must be >= 1"),
            (self.max_watchers >= 1, "max_watchers must be >= 1"),
            (self.watch_fps >= 0, "watch_fps must be >= 0 (0: every step)"),
            (self.watch_timeout > 0, "watch_timeout must be > 0 seconds"),
            (self.max_predict_batch >= 1, "max_predict_batch must be >= 1"),
            (self.session_ttl > 0, "session_ttl must be > 0 seconds"),
            (self.start_timeout > 0, "start_timeout must be > 0 seconds"),
            (self.max_slots >= 1, "max_slots must be >= 1"),
            (self.max_batch >= 1, "max_batch must be >= 1"),
            (self.max_delay_us >= 0, "max_delay_us must be >= 0"),
            (self.inline_rows >= 0, "inline_rows must be >= 0"),
            (self.poll_interval >= 0, "poll_interval must be >= 0"),
            (0 <= self.port <= 65535, "port must be in 0..65535"),
            (0 <= self.metrics_port <= 65535, "metrics_port must be in 0..65535"),
            (self.threads >= 1, "threads must be >= 1"),
            (self.workers >= 1, "workers must be >= 1"),
            (self.max_message_mb >= 1, "max_message_mb must be >= 1"),
            (self.grace >= 0, "grace must be >= 0"),
            (self.backend in ("auto", "torch", "onnx"), f"backend must be auto, torch or onnx, got {self.backend!r}"),
            (self.log_format in ("text", "json"), f"log_format must be text or json, got {self.log_format!r}"),
            (self.tracing in ("off", "otlp", "console"), f"tracing must be off, otlp or console, got {self.tracing!r}"),
            (0.0 <= self.trace_sample <= 1.0, "trace_sample must be in 0..1"),
            (self.trace_step_every >= 0, "trace_step_every must be >= 0"),
            (
                _DEVICE.fullmatch(self.device) is not None,
                f"--device {self.device}: unknown device; use auto, cpu, cuda or cuda:N",
            ),
            (self.exposure_is_protected, self._insecure_bind_message()),
            (
                not (self.snapshot_key_file and self.allow_unsigned_snapshots),
                "--allow-unsigned-snapshots with --snapshot-key-file: a server with a key resumes only snapshots "
                "signed with it; drop one of the two",
            ),
            (self.metrics_ports.stop <= 65536, f"{self._metrics_ports_text()} go past port 65535; lower it"),
            (self.port not in self.metrics_ports or self.port == 0, self._metrics_clash_message()),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid server setting: {message}")

    @property
    def exposure_is_protected(self) -> bool:
        """A non-loopback bind needs a token or TLS, or an explicit --allow-insecure."""
        return is_loopback(self.host) or bool(self.token_file or self.tls_cert or self.allow_insecure)

    def _insecure_bind_message(self) -> str:
        return (
            f"--host {self.host} is reachable from other machines, but neither --token-file nor "
            "--tls-cert/--tls-key is set, so anyone could call the server; add a token or TLS, or pass "
            "--allow-insecure to serve without authentication on purpose"
        )

    @property
    def max_inflight_bytes(self) -> int:
        return self.max_inflight_mb * 1024 * 1024

    @property
    def metrics_ports(self) -> range:
        """The /metrics ports: worker i of --workers N serves on --metrics-port + i; empty when disabled (0)."""
        return range(self.metrics_port, self.metrics_port + self.workers) if self.metrics_port else range(0)

    def _metrics_ports_text(self) -> str:
        ports = self.metrics_ports
        return f"--metrics-port {self.metrics_port}" + (
            f" with --workers {self.workers} (ports {ports.start}..{ports.stop - 1}, one per worker)"
            if self.workers > 1
            else ""
        )

    def _metrics_clash_message(self) -> str:
        return (
            f"{self._metrics_ports_text()} includes the gRPC --port {self.port}; pick a --metrics-port that "
            "keeps clear of --port (or 0 to disable /metrics)"
        )

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ServerConfig field; defaults stay None so that the environment can fill them."""
    for f in dataclasses.fields(ServerConfig):
        env = ENV_PREFIX + f.name.upper()
        # A bool flag alone means true (`--allow-insecure`); it also takes a value (`--forward-thread false`).
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if isinstance(f.default, bool) else {}
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} (env {env}, default {f.default})",
            **switch,
        )


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    default = f.default
    try:
        if isinstance(default, bool):
            word = raw.strip().lower()
            if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(word)
            return word in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError as exc:
        raise ValueError(f"invalid value {raw!r} for {f.name}: expected {type(default).__name__}") from exc
    return raw


def config_from_args(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Build a ServerConfig from parsed flags, falling back to HAMLET_* environment variables."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        raw = getattr(args, f.name, None) if args is not None else None
        if raw is None:
            raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _convert(f, str(raw))
    return ServerConfig(**values)


def to_flags(config: ServerConfig) -> list[str]:
    """The flags that rebuild ``config`` with `parse_flags` (every field, so no environment variable interferes)."""
    flags = []
    for f in dataclasses.fields(ServerConfig):
        value = getattr(config, f.name)
        flags += [_flag(f.name), str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def parse_flags(argv: Sequence[str]) -> ServerConfig:
    """Parse `argv` (flags only) into a ServerConfig; handy for tests and embedding."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)), environ={})
