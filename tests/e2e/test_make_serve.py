"""`make serve` serves the default repository (the trained demo models) and drains on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from hamlet_client import HamletClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_serve_serves_the_trained_demo_models() -> None:
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "serve", "SERVE_ARGS=--port 0 --metrics-port 0 --poll-interval 0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        target = next((line.split()[1] for line in proc.stdout if line.startswith("READY ")), None)
        assert target is not None, f"make serve never printed READY: {proc.stderr.read() if proc.stderr else ''}"
        assert target.startswith("127.0.0.1:")  # loopback by default
        with HamletClient(target, timeout=30) as client:
            models = {info.name: info for info in client.list_models()}
            assert set(models) == {"townlet-L1-mlp", "townlet-L2-lstm"}
            meta = client.metadata("townlet-L1-mlp")
            assert (meta.obs_dim, meta.action_dim, meta.network_type) == (91, 6, "simple")
            with client.episode("townlet-L2-lstm", num_envs=2) as episode:
                step = episode.step(np.zeros((2, 54), np.float32))
            assert step.actions.shape == (2,) and step.q_values.shape == (2, 6)
        os.killpg(proc.pid, signal.SIGTERM)  # make and the server both get it, as from a terminal's kill
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _group_alive(proc.pid):  # the server drains and exits by itself within its grace period
            assert time.monotonic() < deadline, "the server did not exit after SIGTERM"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
