"""examples/scale_out_resume.py drives two replicas with ``resume=True`` episodes (issue 24: the scale-out path
had no runnable example): one replica is drained mid-run and every stream plays on, with exactly the actions
of a run on one replica that nothing interrupts; the script prints its per-stream table."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from live_server import ThreadedServer, write_snapshot_keys

from hamlet_client import HamletClient
from hamlet_server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "scale_out_resume.py"
MODEL, STREAMS, ENVS, STEPS = "townlet-L2-lstm", 4, 2, 40

pytestmark = pytest.mark.slow  # three servers, ~500 streamed steps


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scale_out_resume", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the module runs
    spec.loader.exec_module(module)
    return module


KEYS = write_snapshot_keys(Path(tempfile.mkdtemp(prefix="hamlet-keys-")) / "snapshot-keys")  # one deployment


def _replica() -> ThreadedServer:
    config = ServerConfig(models=ROOT / "models", port=0, metrics_port=0, poll_interval=0, snapshot_key_file=str(KEYS))
    return ThreadedServer(config)


def test_streams_survive_a_drained_replica_with_the_uninterrupted_actions(capsys: pytest.CaptureFixture[str]) -> None:
    example = _example()
    alone = _replica()
    try:
        with HamletClient(alone.target) as client:
            reference = example.play(client, MODEL, STREAMS, ENVS, STEPS, seed=3)
        example.main(["--targets", alone.target, "--streams", "2", "--envs", "2", "--steps", "5"])
    finally:
        alone.stop()
    printed = capsys.readouterr().out
    assert "stream 1: 10 env steps" in printed and "every step was answered" in printed

    first, second = _replica(), _replica()
    stopped = []

    def drain_first(t: int) -> None:
        if t == STEPS // 2:
            first.stop()  # drains: each of its streams gets a snapshot and the end reason server_draining
            stopped.append(t)

    try:
        with HamletClient([first.target, second.target]) as client:
            runs = example.play(client, MODEL, STREAMS, ENVS, STEPS, seed=3, on_round=drain_first)
    finally:
        if not stopped:
            first.stop()
        second.stop()
    assert stopped == [STEPS // 2]
    assert sum(run.resumes for run in runs) >= 1  # round_robin put streams on both; those on the first moved
    for i, (run, ref) in enumerate(zip(runs, reference, strict=True)):
        assert len(run.actions) == STEPS, i
        np.testing.assert_array_equal(np.stack(run.actions), np.stack(ref.actions), err_msg=f"stream {i}")
        assert run.survival == ref.survival
