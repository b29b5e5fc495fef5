"""`hamlet-server serve --workers 2`: two processes share one port (SO_REUSEPORT) under one supervisor.

Sixteen clients with their own connections spread over both workers; every stream keeps its LSTM state on its
worker (Q-values equal a local run step for step); a worker killed with SIGKILL is replaced and serves again;
SIGTERM to the supervisor drains both and exits 0; a /metrics port a worker cannot bind refuses the start.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from ports import free_ports

from hamlet_client import HamletClient
from townlet.inference import HamletModel
from townlet.inference.filenames import parse_checkpoint_name

ROOT = Path(__file__).resolve().parents[2]
MODEL = "townlet-L2-lstm"
CLIENTS, STEPS = 16, 6
LOCAL_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per client, not one shared

pytestmark = pytest.mark.slow


def _serve(*flags: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", str(ROOT / "models"), "--port", "0",
           "--backend", "torch", "--poll-interval", "0", "--grace", "5", "--log-level", "warning", *flags]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMLET_")} | {"PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _metric(port: int, pattern: str) -> float:
    """The sum of the values of the lines of worker ``port``'s /metrics that match ``pattern``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        return sum(float(value) for value in re.findall(pattern, page.read().decode(), re.M))


def _workers_of(supervisor: subprocess.Popen[str]) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(supervisor.pid)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


@pytest.fixture
def workers() -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    metrics = free_ports(2)
    proc = _serve("--workers", "2", "--metrics-port", str(metrics))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), f"supervisor did not start: {line!r} {proc.stderr and proc.stderr.read()}"
        yield proc, line.split()[1], metrics
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _observations(client: int) -> list[np.ndarray]:
    rng = np.random.default_rng(500 + client)
    return [rng.random((2, 54), dtype=np.float32) for _ in range(STEPS)]


def _episode(target: str, client: int) -> list[np.ndarray]:
    with (
        HamletClient(target, options=LOCAL_CONNECTION, timeout=60.0) as remote,
        remote.episode(MODEL, num_envs=2) as ep,
    ):
        return [ep.step(obs).q_values for obs in _observations(client)]


def _latest_l2() -> HamletModel:
    files = [p for p in (ROOT / "models" / MODEL).iterdir() if parse_checkpoint_name(p.name)]
    return HamletModel.load(max(files, key=lambda p: parse_checkpoint_name(p.name).episode))  # type: ignore[union-attr]


def test_streams_spread_over_the_workers_and_keep_their_state(workers: tuple) -> None:
    supervisor, target, metrics = workers
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda c: _episode(target, c), range(CLIENTS)))
    model = _latest_l2()
    for client, q_values in enumerate(results):
        hidden = None
        for obs, got in zip(_observations(client), q_values, strict=True):
            want = model.predict(torch.from_numpy(obs), hidden)
            hidden = want.hidden
            np.testing.assert_allclose(got, want.q_values.numpy(), rtol=1e-5, atol=1e-5)
    served = [_metric(metrics + i, r"^hamlet_stream_ends_total\{[^}]*\} ([0-9.e+]+)") for i in (0, 1)]
    assert sum(served) == CLIENTS and min(served) >= 1, f"streams per worker: {served}"  # P(all on one) = 2^-15

    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0
    assert _workers_of(supervisor) == []


def test_a_killed_worker_is_replaced(workers: tuple) -> None:
    supervisor, target, metrics = workers
    victim = _workers_of(supervisor)[1]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        alive = _workers_of(supervisor)
        if len(alive) == 2 and victim not in alive:
            try:
                _metric(metrics + 1, r"^hamlet_active_sessions ([0-9.e+]+)")  # the new worker 1 serves /metrics
                break
            except OSError:
                pass
        assert time.monotonic() < deadline, f"worker {victim} was not replaced: {alive}"
        time.sleep(0.2)
    assert len(_episode(target, 0)) == STEPS
    assert supervisor.poll() is None


def test_a_worker_that_cannot_start_refuses_the_start() -> None:
    metrics = free_ports(2)
    with socket.socket() as taken:  # worker 1's /metrics port
        taken.bind(("127.0.0.1", metrics + 1))
        taken.listen()
        proc = _serve("--workers", "2", "--metrics-port", str(metrics))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "READY" not in out
    assert f"--metrics-port {metrics + 1}" in err and "already in use" in err
