"""Soak a Hamlet server: N episode streams x M environments for T seconds, with figures at intervals.

    python bench/soak.py --spawn --streams 64 --envs 4 --duration 60          # spawns `hamlet-server serve`
    python bench/soak.py --spawn --untrained --duration 600 --streams 256    # seeded untrained demo models
    python bench/soak.py --target 127.0.0.1:50051 --metrics-url http://127.0.0.1:9464/metrics --pid 4242

Every stream is one `AsyncHamletClient.episode` (the client SDK) stepping as fast as the server answers,
resetting its environments every `--episode-steps` steps; a stream the server ends (any error) is counted
under its status code and reopened after a short pause, so the load stays at N streams.

Every `--interval` seconds it prints steps/s and env-steps/s, step latency p50/p99, errors by status code,
open sessions (the server's `hamlet_active_sessions` gauge from /metrics) and the server's resident memory
(VmRSS from /proc/PID/status: known when it spawned the server, or with `--pid`). At the end it closes every
stream and prints the errors, the session count after close (which must return to 0), and the RSS slope
after warm-up in MB/min (least squares over one sample per second from `--warmup` seconds on).

`--spawn` starts `python -m hamlet_server.cli serve` on a free loopback port with /metrics on another, over
`--models` (default: the trained demo models in models/) or `--untrained` (scripts/make_demo_models.py into a
temp dir); `--server-arg` and `--server-env` pass flags and variables to it (e.g. `--server-env
MALLOC_ARENA_MAX=2`). Numbers, not assertions: the machine's figures go in docs/SERVING.md (*Soak*).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import numpy as np
from ports import free_port

from hamlet_client import AsyncEpisode, AsyncHamletClient, HamletError

ROOT = Path(__file__).resolve().parent.parent
RSS_PERIOD = 1.0  # seconds between RSS samples (the slope is fitted over these)


# ------------------------------------------------------------------------------------------- figures
def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` points, in value per minute (0 with fewer than 2 points)."""
    if len(points) < 2:
        return 0.0
    t = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    if np.ptp(t) == 0:
        return 0.0
    return float(np.polyfit(t, y, 1)[0] * 60.0)


def read_rss_mb(pid: int | None) -> float | None:
    """Resident memory of process ``pid`` in MB (VmRSS), or None when unknown."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def read_gauge(url: str | None, name: str) -> float | None:
    """The value of an unlabelled gauge in a Prometheus text page, or None when unknown."""
    if not url:
        return None
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------- the load
@dataclass
class Load:
    """Counters shared by the stream tasks; the reporter reads and resets the per-interval parts."""

    model: str | None
    envs: int
    episode_steps: int
    steps: int = 0
    opened: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def drive(self, client: AsyncHamletClient, index: int) -> None:
        """One stream slot: keep an episode open and stepping until `stop`; reopen after an error."""
        rng = np.random.default_rng(index)
        while not self.stop.is_set():
            try:
                async with client.episode(self.model, num_envs=self.envs, seed=index) as episode:
                    self.opened += 1
                    bank = rng.random((16, self.envs, episode.obs_dim), dtype=np.float32)
                    await self._step_until_stop(episode, bank)
            except HamletError as exc:
                self.errors[exc.code.name if exc.code is not None else type(exc).__name__] += 1
                await asyncio.sleep(0.5)
            except Exception as exc:  # anything else is a client bug worth seeing, by name
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.5)

    async def _step_until_stop(self, episode: AsyncEpisode, bank: np.ndarray) -> None:
        t = 0
        while not self.stop.is_set():
            reset = t % self.episode_steps == 0 and t > 0
            started = time.perf_counter()
            await episode.step(bank[t % len(bank)], reset=reset)
            self.latencies.append(time.perf_counter() - started)
            self.steps += 1
            t += 1


def _quantile_ms(values: list[float], q: float) -> float:
    return float(np.quantile(values, q) * 1e3) if values else float("nan")


async def soak(args: argparse.Namespace, target: str, metrics_url: str | None, pid: int | None) -> int:
    load = Load(args.model, args.envs, args.episode_steps)
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()

    async def sample_rss() -> None:
        while True:
            value = read_rss_mb(pid)
            if value is not None:
                rss.append((time.monotonic() - t0, value))
            await asyncio.sleep(RSS_PERIOD)

    print(f"soak: {args.streams} streams x {args.envs} envs of {args.model or '(default model)'} on {target} for "
          f"{args.duration:g} s, warm-up {args.warmup:g} s, {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    async with AsyncHamletClient(target, token=args.token, timeout=args.step_timeout) as client:
        sampler = asyncio.create_task(sample_rss())
        tasks = [asyncio.create_task(load.drive(client, i)) for i in range(args.streams)]
        last_errors: collections.Counter[str] = collections.Counter()
        last_steps, last_t = 0, t0
        while (now := time.monotonic()) - t0 < args.duration:
            await asyncio.sleep(min(args.interval, args.duration - (now - t0)))
            now = time.monotonic()
            window, load.latencies = load.latencies, []
            rate = (load.steps - last_steps) / (now - last_t)
            new_errors = load.errors - last_errors
            sessions = read_gauge(metrics_url, "hamlet_active_sessions")
            memory = read_rss_mb(pid)
            print(f"t={now - t0:6.0f}s  steps/s {rate:8.1f}  env-steps/s {rate * args.envs:9.1f}  "
                  f"p50 {_quantile_ms(window, 0.5):6.1f} ms  p99 {_quantile_ms(window, 0.99):6.1f} ms  "
                  f"sessions {_fmt(sessions, '.0f')}  rss {_fmt(memory, '.1f')} MB  "
                  f"errors {dict(new_errors) or 'none'}", flush=True)  # fmt: skip
            last_steps, last_t, last_errors = load.steps, now, collections.Counter(load.errors)
        load.stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    after, waited = await _sessions_after_close(metrics_url)
    _summary(args, load, elapsed, rss, after, waited)
    return 0


async def _sessions_after_close(metrics_url: str | None) -> tuple[float | None, float]:
    """Poll the session gauge for up to 10 s after every stream closed, until it reads 0."""
    started = time.monotonic()
    value = read_gauge(metrics_url, "hamlet_active_sessions")
    while value not in (None, 0.0) and time.monotonic() - started < 10:
        await asyncio.sleep(0.1)
        value = read_gauge(metrics_url, "hamlet_active_sessions")
    return value, time.monotonic() - started


def _summary(
    args: argparse.Namespace,
    load: Load,
    elapsed: float,
    rss: list[tuple[float, float]],
    after: float | None,
    waited: float,
) -> None:
    warm = [p for p in rss if p[0] >= args.warmup]
    print(f"\nsummary: {load.steps} steps in {elapsed:.0f} s = {load.steps / elapsed:.1f} steps/s "
          f"({load.steps * args.envs / elapsed:.1f} env-steps/s); {load.opened} streams opened "
          f"({args.streams} slots)")  # fmt: skip
    print(f"errors by status: {dict(load.errors) or 'none'}")
    print(f"open sessions after close: {_fmt(after, '.0f')} (read {waited:.1f} s after the last stream closed)")
    if warm:
        values = [v for _, v in warm]
        print(f"server RSS: start {rss[0][1]:.1f} MB, after warm-up {values[0]:.1f} MB, end {values[-1]:.1f} MB, "
              f"max {max(values):.1f} MB; slope after {args.warmup:g} s warm-up "
              f"{slope_per_minute(warm):+.2f} MB/min ({len(warm)} samples, least squares)")  # fmt: skip
    else:
        print("server RSS: unknown (spawn the server, or pass --pid of a server on this machine)")


def _fmt(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


# ------------------------------------------------------------------------------------------- the server


@contextlib.contextmanager
def spawned_server(args: argparse.Namespace) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """`hamlet-server serve` on free loopback ports (bench/floor.py's READY pattern); yields (process, target,
    metrics url) and stops it (SIGTERM, drain) afterwards. Its log goes to a temp file, shown if it fails."""
    with tempfile.TemporaryDirectory(prefix="hamlet-soak-") as tmp:
        models = Path(args.models)
        if args.untrained:
            sys.path.insert(0, str(ROOT / "scripts"))
            from make_demo_models import write_demo_models

            models = Path(tmp) / "models"
            write_demo_models(models)
        metrics_port = free_port()
        cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", str(models), "--port", "0",
               "--metrics-port", str(metrics_port), "--log-level", "WARNING", *args.server_arg]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(kv.split("=", 1) for kv in args.server_env)}
        log_path = Path(tmp) / "server.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
            try:
                assert proc.stdout is not None
                target = next((line.split()[1] for line in proc.stdout if line.startswith("READY ")), None)
                if target is None:
                    raise RuntimeError(f"the server exited ({proc.wait()}) without READY: {log_path.read_text()}")
                yield proc, target, f"http://127.0.0.1:{metrics_port}/metrics"
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        tail = log_path.read_text().strip().splitlines()[-5:]
        if tail:
            print("server log (last lines):\n  " + "\n  ".join(tail))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="HOST:PORT of a running server")
    where.add_argument("--spawn", action="store_true", help="start `hamlet-server serve` on a free port")
    parser.add_argument("--streams", type=int, default=64, help="concurrent episode streams (N)")
    parser.add_argument("--envs", type=int, default=4, help="environments per stream (M)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (T)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between printed figures")
    parser.add_argument("--warmup", type=float, help="seconds left out of the RSS slope (default: T/4, <= 120)")
    parser.add_argument("--model", default="townlet-L2-lstm", help="model name ('' = the server's default)")
    parser.add_argument("--episode-steps", type=int, default=500, help="reset the environments every this many steps")
    parser.add_argument("--step-timeout", type=float, default=30.0, help="client timeout per step, seconds")
    parser.add_argument("--token", help="bearer token, for a server started with --token-file")
    parser.add_argument("--metrics-url", help="with --target: its /metrics URL (for the session count)")
    parser.add_argument("--pid", type=int, help="with --target: its process id on this machine (for RSS)")
    parser.add_argument("--models", default=str(ROOT / "models"), help="with --spawn: the model repository")
    parser.add_argument("--untrained", action="store_true", help="with --spawn: serve seeded untrained demo models")
    parser.add_argument("--server-arg", action="append", default=[], metavar="FLAG",
                        help="with --spawn: one more argument for the server (repeat: --server-arg=--max-delay-us "
                             "--server-arg=200)")  # fmt: skip
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --spawn: an environment variable for the server, e.g. MALLOC_ARENA_MAX=2",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.streams < 1 or args.envs < 1 or args.duration <= 0 or args.interval <= 0:
        _parser().error("--streams and --envs must be >= 1, --duration and --interval > 0")
    if any("=" not in kv for kv in args.server_env):
        _parser().error("--server-env takes KEY=VALUE")
    args.warmup = min(args.duration / 4, 120.0) if args.warmup is None else args.warmup
    if args.untrained and args.model == "townlet-L2-lstm":
        args.model = "untrained-lstm-L2"
    args.model = args.model or None
    if args.target:
        return asyncio.run(soak(args, args.target, args.metrics_url, args.pid))
    with spawned_server(args) as (proc, target, metrics_url):
        return asyncio.run(soak(args, target, metrics_url, proc.pid))


if __name__ == "__main__":
    sys.exit(main())
