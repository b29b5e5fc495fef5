"""Episodes that outlive a replica, end to end: three ``hamlet-server`` processes on three loopback ports
sharing one --snapshot-key-file, 32 streams x 4 envs of the trained L2 demo model through the SDK with
client-side round_robin balancing. SIGTERM (drain hand-off) or SIGKILL (per-step snapshots) one replica
mid-run: every episode continues on the others, the simulator loops see no error, and every step's Q-values
equal an uninterrupted local run. Unary Predict spreads over the replicas."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_models import DEMO_L2
from live_server import write_snapshot_keys
from ports import free_port

from hamlet_client import AsyncHamletClient, HamletClient
from townlet.inference import HamletModel

ROOT = Path(__file__).resolve().parents[2]
MODEL = "townlet-L2-lstm"
STREAMS, ENVS, STEPS = 32, 4, 24

pytestmark = pytest.mark.slow


class Replica:
    """One ``hamlet-server serve`` process on a free port, its metrics on another."""

    def __init__(self, key_file: Path) -> None:
        self.metrics_port = free_port()
        cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", str(ROOT / "models"), "--port", "0",
               "--metrics-port", str(self.metrics_port), "--poll-interval", "0", "--grace", "5",
               "--log-level", "warning", "--snapshot-key-file", str(key_file)]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("HAMLET_")} | {"PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.target = ""

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), f"replica did not start: {line!r}"
        self.target = line.split()[1]

    def predict_calls(self) -> int:
        """Predict calls this replica answered OK, from its /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as page:
            text = page.read().decode()
        found = re.search(r'hamlet_requests_total\{code="OK",method="Predict"\} ([0-9.e+]+)', text)
        return int(float(found.group(1))) if found else 0

    def open_streams(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as page:
            found = re.search(r"^hamlet_active_sessions ([0-9.e+]+)", page.read().decode(), re.M)
        return int(float(found.group(1))) if found else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    key_file = write_snapshot_keys(tmp_path / "snapshot-keys")  # one deployment: every replica signs with it
    started = [Replica(key_file) for _ in range(3)]  # start all three, then wait: they load in parallel
    try:
        for replica in started:
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


def _observations(stream: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + stream)
    return [rng.random((ENVS, 54), dtype=np.float32) for _ in range(STEPS)]


def _resets(stream: int, t: int) -> list[bool]:
    return [t > 0 and (t + stream + env) % 9 == 0 for env in range(ENVS)]


def _reference(model: HamletModel, stream: int) -> list[np.ndarray]:
    """The same episode played locally without interruption: Q-values per step."""
    hidden, out = None, []
    for t, obs in enumerate(_observations(stream)):
        result = model.predict(torch.from_numpy(obs), hidden, episode_start=torch.tensor(_resets(stream, t)))
        out.append(result.q_values.numpy())
        hidden = result.hidden
    return out


async def _simulate(client: AsyncHamletClient, stream: int, progress: list[int], every: int) -> tuple:
    q_values = []
    async with client.episode(MODEL, num_envs=ENVS, resume=True, snapshot_every=every) as episode:
        for t, obs in enumerate(_observations(stream)):
            step = await episode.step(obs, reset=_resets(stream, t))
            assert step.step_index == t
            q_values.append(step.q_values)
            progress[0] += 1
            await asyncio.sleep(0.002)  # a simulator's own work between steps
        return q_values, episode.resumes


async def _run_with_a_failure(replicas: list[Replica], sig: int, every: int) -> tuple[list[tuple], int]:
    progress = [0]
    async with AsyncHamletClient([r.target for r in replicas], timeout=60.0) as client:
        for _ in range(6):  # every subchannel connected, so round_robin spreads the streams over all three
            await client.predict(np.zeros(54, np.float32), model=MODEL)
        tasks = [asyncio.get_running_loop().create_task(_simulate(client, s, progress, every)) for s in range(STREAMS)]
        deadline = time.monotonic() + 120
        while progress[0] < STREAMS * STEPS // 3:
            assert time.monotonic() < deadline, "the run made no progress"
            await asyncio.sleep(0.01)
        victim = max(replicas, key=Replica.open_streams)
        on_victim = victim.open_streams()
        victim.proc.send_signal(sig)
        return await asyncio.wait_for(asyncio.gather(*tasks), 180), on_victim


def _check(results: list[tuple]) -> int:
    model = HamletModel.load(DEMO_L2)
    for stream, (q_values, _) in enumerate(results):
        for got, want in zip(q_values, _reference(model, stream), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # batching order: float32 rounding only
    return sum(resumes for _, resumes in results)


@pytest.mark.parametrize(("sig", "every"), [(signal.SIGTERM, 0), (signal.SIGKILL, 1)], ids=["drain", "kill"])
def test_episodes_survive_a_replica(replicas: list[Replica], sig: int, every: int) -> None:
    results, on_victim = asyncio.run(_run_with_a_failure(replicas, sig, every))
    resumes = _check(results)  # zero errors reached the loops (gather raised none), identical Q-values
    assert on_victim >= 2, "the balancing did not spread the streams"
    assert resumes >= on_victim  # every episode of the failed replica was resumed elsewhere (some twice)


def test_unary_predict_spreads_over_the_replicas(replicas: list[Replica]) -> None:
    with HamletClient([r.target for r in replicas], timeout=30.0) as client:
        for _ in range(30):
            client.predict(np.zeros(54, np.float32), model=MODEL)
    counts = [replica.predict_calls() for replica in replicas]
    assert sum(counts) == 30 and all(count >= 5 for count in counts), counts  # round_robin: ~10 each
