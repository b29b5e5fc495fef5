"""`hamlet-bench --local`: the same load run in this process by `LocalPolicy`, for the local-vs-remote row.

The model's verified ONNX export is fetched from the first target once (before the clock starts), then the
N episodes of M environments are stepped in turn by one thread, as N simulators sharing one process would,
each step timed from observations in to actions out, exactly as a remote step is timed. The spec's
``episode_steps`` resets, ``epsilon``, ``predict_fraction`` and observations (same seeds) are the remote
run's. Lock-step only: an open-loop ``rate`` is refused (a local step does not wait on anyone).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from hamlet_client.client import HamletClient
from hamlet_client.loadtest.driver import LoadSpec, Progress
from hamlet_client.loadtest.figures import RunFigures, summarize_latencies

__all__ = ["run_local"]


def run_local(
    spec: LoadSpec,
    target: str,
    *,
    progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 1.0,
) -> RunFigures:
    """Fetch ``spec.model`` from ``target`` and measure it run locally (blocking; call it on a worker thread).

    Raises:
        ValueError: ``spec.rate`` is set. ImportError: onnxruntime is missing (``hamlet-client[local]``).
        HamletError: the server refused the artifact.
    """
    if spec.rate is not None:
        raise ValueError("--local measures lock-step only (a local step waits on nobody); leave out --rate")
    with HamletClient(target, timeout=60.0) as client:
        policy = client.local_policy(spec.model or None, poll_interval=None)
    rngs = [np.random.default_rng(spec.seed + index) for index in range(spec.streams)]
    observations = [rng.random((spec.envs, spec.obs_dim), dtype=np.float32) for rng in rngs]  # as the driver's
    episodes = [policy.episode(num_envs=spec.envs, epsilon=spec.epsilon) for _ in range(spec.streams)]
    latencies: dict[str, list[float]] = {"step": [], "predict": []}
    begin = time.perf_counter()
    window = (begin + spec.warmup, begin + spec.warmup + spec.duration)
    ticker = _Ticker(begin, spec.envs, window, progress, progress_interval)
    steps_taken = [0] * spec.streams
    cpu_start = None
    while (now := time.perf_counter()) < window[1]:
        if cpu_start is None and now >= window[0]:
            cpu_start, wall_start = time.process_time(), now
        for index, episode in enumerate(episodes):
            started = time.perf_counter()
            if spec.predict_fraction and rngs[index].random() < spec.predict_fraction:
                policy.predict(observations[index], epsilon=spec.epsilon)
                kind = "predict"
            else:
                every, taken = spec.episode_steps, steps_taken[index]
                episode.step(observations[index], reset=bool(every and taken and taken % every == 0))
                steps_taken[index] += 1
                kind = "step"
            finished = time.perf_counter()
            if window[0] <= started and finished <= window[1]:
                latencies[kind].append(finished - started)
            ticker.call(finished - started, finished)
    cpu = 0.0 if cpu_start is None else (time.process_time() - cpu_start) / max(time.perf_counter() - wall_start, 1e-9)
    return RunFigures(
        label="local",
        elapsed_s=spec.duration,
        envs=spec.envs,
        steps=len(latencies["step"]),
        predicts=len(latencies["predict"]),
        step_latency=summarize_latencies(latencies["step"]),
        predict_latency=summarize_latencies(latencies["predict"]),
        client_cpu=cpu,
    )


class _Ticker:
    """Live progress of the local run: a `Progress` of the last interval's calls every ``interval`` seconds."""

    def __init__(
        self,
        begin: float,
        envs: int,
        window: tuple[float, float],
        progress: Callable[[Progress], None] | None,
        interval: float,
    ) -> None:
        self.begin, self.envs, self.window, self.progress, self.interval = begin, envs, window, progress, interval
        self.last = begin
        self.recent: list[float] = []

    def call(self, latency: float, now: float) -> None:
        if self.progress is None:
            return
        self.recent.append(latency)
        if now - self.last >= self.interval:
            rate = len(self.recent) / (now - self.last)
            p50 = float(np.median(self.recent)) * 1e6
            measuring = self.window[0] <= now <= self.window[1]
            self.progress(Progress(now - self.begin, measuring, rate, rate * self.envs, p50, 0))
            self.recent, self.last = [], now
