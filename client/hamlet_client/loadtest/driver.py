"""The load generator of `hamlet-bench`: many episode streams from one asyncio process over raw hamlet.v1 stubs.

Each of the N streams is one ``StreamEpisode`` of M environments. Lock-step (the default): a stream sends its
next step as soon as the last one is answered, as an agent stepping as fast as the server allows does.
Open-loop (``rate``): calls are due at a fixed total rate shared by the streams; a stream still keeps one
call in flight, and late calls are timed from when they were due (see `Pacer`). With ``predict_fraction``
each call is, with that probability, a unary ``Predict`` of the same M observations instead of a step.
A stream the server ends (any status) is counted under its status code and reopened after a short pause.

Raw stubs, one reused observation message per stream: the client does as little as a client can, so the
figures are the server's (``client_cpu`` near 1.0 says the client was the limit). Nothing here prints.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from hamlet_client.loadtest.figures import Pacer, RunFigures, histogram_totals, mean_batch, summarize_latencies
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import tensor_pb2
from hamlet_client.stub import async_stub

if TYPE_CHECKING:
    from hamlet_client.stub import AsyncInferenceStub

__all__ = ["LoadSpec", "Progress", "discover_model", "run_load", "scrape_batch_totals"]

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_REOPEN_PAUSE_S = 0.1  # after a stream ends with an error, before it is opened again
_STOP_GRACE_S = 5.0  # how long calls in flight at the end may take before they are cancelled
# A local subchannel pool: without it, channels with the same target and options share one connection
# (grpc's global pool), so --channels 8 would still be one TCP connection and land on one server process.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True)
class LoadSpec:
    """One measured run: what to send, how much of it, and how fast."""

    streams: int
    envs: int
    obs_dim: int
    duration: float
    warmup: float = 1.0
    model: str = ""
    rate: float | None = None
    """Total calls/s over all streams (open loop); None = lock-step (each stream as fast as answered)."""
    predict_fraction: float = 0.0
    episode_steps: int = 200
    """Every this many steps a stream resets all its environments (0 = never)."""
    epsilon: float = 0.0
    channels: int = 1
    """gRPC channels (HTTP/2 connections) per target; streams are spread over them."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("streams", "envs", "obs_dim", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not self.duration > 0 or self.warmup < 0:
            raise ValueError(f"duration must be > 0 and warmup >= 0 seconds, got {self.duration!r}, {self.warmup!r}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate: expected calls/s > 0 (or None for lock-step), got {self.rate!r}")
        if not 0.0 <= self.predict_fraction <= 1.0 or not 0.0 <= self.epsilon <= 1.0:
            raise ValueError("predict_fraction and epsilon must lie in [0, 1]")
        if self.episode_steps < 0:
            raise ValueError(f"episode_steps: expected >= 0, got {self.episode_steps!r}")


@dataclass(frozen=True)
class Progress:
    """A live snapshot, every progress interval: figures of the last interval only."""

    elapsed_s: float
    measuring: bool
    calls_per_s: float
    env_steps_per_s: float
    p50_us: float
    errors: int


class _Recorder:
    """Counts and latencies of the calls that started and finished inside the measured window."""

    def __init__(self, envs: int, window_start: float, window_end: float) -> None:
        self.envs = envs
        self.window = (window_start, window_end)
        self.step_latencies: list[float] = []
        self.predict_latencies: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.behind = 0
        self.stopping = False
        self._recent: list[float] = []  # every call since the last progress snapshot (warm-up included)

    def call(self, kind: str, started: float, finished: float) -> None:
        latency = finished - started
        self._recent.append(latency)
        if self.window[0] <= started and finished <= self.window[1]:
            (self.step_latencies if kind == "step" else self.predict_latencies).append(latency)

    def error(self, code_name: str) -> None:
        if not self.stopping:
            self.errors[code_name] += 1

    def late(self, due: float) -> None:
        if self.window[0] <= due <= self.window[1]:
            self.behind += 1

    def snapshot(self, elapsed: float, interval: float) -> Progress:
        recent, self._recent = self._recent, []
        p50 = float(np.median(recent)) * 1e6 if recent else float("nan")
        rate = len(recent) / interval if interval > 0 else 0.0
        measuring = self.window[0] <= time.perf_counter() <= self.window[1]
        return Progress(elapsed, measuring, rate, rate * self.envs, p50, sum(self.errors.values()))


def _tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(shape=list(array.shape), dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=array.tobytes())


class _Stream:
    """One simulated agent: a StreamEpisode of M environments (reopened when the server ends it)."""

    def __init__(self, spec: LoadSpec, index: int, stub: AsyncInferenceStub, rec: _Recorder) -> None:
        self.spec, self.stub, self.rec = spec, stub, rec
        self.rng = np.random.default_rng(spec.seed + index)
        obs = _tensor(self.rng.random((spec.envs, spec.obs_dim), dtype=np.float32))
        self.start = pb.StreamEpisodeRequest(
            start=pb.EpisodeStart(model=spec.model, num_envs=spec.envs, epsilon=spec.epsilon)
        )
        self.step = pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=obs))
        self.reset_step = pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=obs, reset=[True] * spec.envs))
        self.predict = pb.PredictRequest(model=spec.model, observations=obs, epsilon=spec.epsilon)
        self.pacer = None
        if spec.rate is not None:
            self.pacer = Pacer.for_stream(spec.rate, spec.streams, index, rec.window[0] - spec.warmup)
        self.steps_taken = 0

    async def run(self) -> None:
        if self.spec.predict_fraction >= 1.0:  # Predict only: no stream to hold open
            await self._calls(None)
            return
        while not self.rec.stopping:
            call = self.stub.StreamEpisode()
            try:
                await call.write(self.start)
                last = await call.read()
                if isinstance(last, pb.StreamEpisodeResponse) and not last.HasField("ended"):  # not EOF
                    last = await self._calls(call)
                if last is None:  # the run is over: close our side, read what is left
                    await call.done_writing()
                    while await call.read() is not grpc.aio.EOF:
                        pass
                else:  # the server ended the stream: count it once, by its in-band code or its final status
                    self._ended(last, await call.code())
            except grpc.aio.AioRpcError as exc:
                self.rec.error(exc.code().name)
            except asyncio.InvalidStateError:  # a write after the server had already finished the stream
                self.rec.error((await call.code()).name)
            if not self.rec.stopping:
                await asyncio.sleep(_REOPEN_PAUSE_S)

    async def _calls(self, call: Any) -> Any:
        """Step (or Predict) until the run stops (returns None) or the server ends the stream (returns its
        last response: ``EpisodeEnded`` or EOF)."""
        fraction = self.spec.predict_fraction
        while not self.rec.stopping:
            started = await self._wait_until_due()
            if call is None or (fraction and self.rng.random() < fraction):
                try:
                    await self.stub.Predict(self.predict, timeout=60.0)
                except grpc.aio.AioRpcError as exc:
                    self.rec.error(exc.code().name)
                    await asyncio.sleep(_REOPEN_PAUSE_S)
                    continue
                self.rec.call("predict", started, time.perf_counter())
                continue
            episodes = self.spec.episode_steps
            reset = episodes and self.steps_taken and self.steps_taken % episodes == 0
            await call.write(self.reset_step if reset else self.step)
            response = await call.read()
            if response is grpc.aio.EOF or response.HasField("ended"):
                return response
            self.steps_taken += 1
            self.rec.call("step", started, time.perf_counter())
        return None

    async def _wait_until_due(self) -> float:
        """The time the next call's latency counts from. Lock-step: now. Open loop: when the call was due if
        the stream is late (its previous call came back after that: the server's delay, counted), else the
        moment it is sent after sleeping (the event loop's timer wakes up to ~1 ms late: the client's)."""
        now = time.perf_counter()
        if self.pacer is None:
            return now
        due = self.pacer.next_due()
        if due > now:
            await asyncio.sleep(due - now)
            return time.perf_counter()
        if now - due > 1e-3:
            self.rec.late(due)
        return due

    def _ended(self, response: Any, code: grpc.StatusCode) -> None:
        if response is not grpc.aio.EOF and response.HasField("ended"):
            self.rec.error(_CODE_NAMES.get(response.ended.status_code, str(response.ended.status_code)))
        elif code is not grpc.StatusCode.OK:
            self.rec.error(code.name)
        else:  # OK, but before the client closed: not an error code, still a stream the load lost
            self.rec.error("CLOSED_BY_SERVER")


def scrape_batch_totals(urls: Sequence[str]) -> tuple[float, float] | None:
    """``(sum, count)`` of ``hamlet_batch_size`` over every /metrics page in ``urls`` (None if none had it)."""
    found = None
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as page:
                totals = histogram_totals(page.read().decode(), "hamlet_batch_size")
        except OSError:
            continue
        if totals is not None:
            found = totals if found is None else (found[0] + totals[0], found[1] + totals[1])
    return found


async def discover_model(target: str, model: str) -> tuple[str, int, bool]:
    """``(name, obs_dim, recurrent)`` of ``model`` (empty: the server's default) from ``ListModels``."""
    async with grpc.aio.insecure_channel(target) as channel:
        listing = await async_stub(channel).ListModels(pb.ListModelsRequest(), timeout=10.0)
    name = model or listing.default_model
    for summary in listing.models:
        if summary.name == name:
            return name, summary.obs_dim, summary.network_type == 2  # NETWORK_TYPE_RECURRENT
    known = ", ".join(s.name for s in listing.models) or "none"
    raise LookupError(f"{target} serves no model {name!r} (it serves: {known}); pick one with --model")


async def run_load(
    spec: LoadSpec,
    targets: Sequence[str],
    *,
    label: str = "server",
    metrics_urls: Sequence[str] = (),
    progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 1.0,
) -> RunFigures:
    """Drive ``spec`` against ``targets`` (streams spread round-robin) and return the measured window's figures."""
    if not targets:
        raise ValueError("targets: give at least one host:port")
    begin = time.perf_counter()
    rec = _Recorder(spec.envs, begin + spec.warmup, begin + spec.warmup + spec.duration)
    channels = [
        grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) for target in targets for _ in range(spec.channels)
    ]
    stubs = [async_stub(channel) for channel in channels]
    tasks = [asyncio.create_task(_Stream(spec, i, stubs[i % len(stubs)], rec).run()) for i in range(spec.streams)]
    ticker = asyncio.create_task(_report_progress(rec, begin, progress, progress_interval)) if progress else None
    try:
        await asyncio.sleep(max(0.0, rec.window[0] - time.perf_counter()))
        before = await asyncio.to_thread(scrape_batch_totals, metrics_urls) if metrics_urls else None
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, rec.window[1] - time.perf_counter()))
        cpu = (time.process_time() - cpu_start) / max(time.perf_counter() - wall_start, 1e-9)
        rec.stopping = True
        after = await asyncio.to_thread(scrape_batch_totals, metrics_urls) if metrics_urls else None
        await asyncio.wait(tasks, timeout=_STOP_GRACE_S)
    finally:
        rec.stopping = True
        for task in [*tasks, *([ticker] if ticker else [])]:
            task.cancel()
        await asyncio.gather(*tasks, *([ticker] if ticker else []), return_exceptions=True)
        for channel in channels:
            await channel.close()
    for task in tasks:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure  # a bug in the load generator, not a server error (those are counted)
    return RunFigures(
        label=label,
        elapsed_s=spec.duration,
        envs=spec.envs,
        steps=len(rec.step_latencies),
        predicts=len(rec.predict_latencies),
        step_latency=summarize_latencies(rec.step_latencies),
        predict_latency=summarize_latencies(rec.predict_latencies),
        errors=dict(rec.errors),
        mean_server_batch=mean_batch(before, after),
        client_cpu=cpu,
        behind_schedule=rec.behind,
    )


async def _report_progress(rec: _Recorder, begin: float, progress: Callable[[Progress], None], interval: float) -> None:
    last = time.perf_counter()
    while True:
        await asyncio.sleep(interval)
        now = time.perf_counter()
        with contextlib.suppress(Exception):  # a broken progress printer must not stop the measurement
            progress(rec.snapshot(now - begin, now - last))
        last = now
