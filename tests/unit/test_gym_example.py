"""examples/gym_evaluate.py plays both demo models through ``gymnasium.make_vec`` and the client SDK (issue 24):
the served models play exactly the episodes the local `HamletModel`s play (the L2 LSTM's state kept by the
server), ``--help`` needs no torch, and the script prints a table per model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from demo_models import DEMO_L1, DEMO_L2
from live_server import ThreadedServer

from hamlet_client import HamletClient
from hamlet_server.config import ServerConfig
from townlet.inference import HamletModel

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gym_evaluate.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gym_evaluate", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    live = ThreadedServer(ServerConfig(models=ROOT / "models", port=0, metrics_port=0, poll_interval=0))
    yield live
    live.stop()


@pytest.mark.slow  # plays 3 x 2 x 6 episodes of ~250 steps, served and local
def test_served_models_play_the_episodes_the_local_models_play(server: ThreadedServer) -> None:
    example = _example()
    with HamletClient(server.target) as client:
        for checkpoint, layouts in ((DEMO_L1, ["trained layout", "fresh layout per episode"]),
                                    (DEMO_L2, ["fresh layout per episode"])):  # fmt: skip
            name = checkpoint.parent.name
            meta = {**client.metadata(name).extra}
            remote = example.evaluate(meta, lambda n, m=name: example.served(client, m, n), 6, seed=3)
            model = HamletModel.load(checkpoint)
            here = example.evaluate(model.metadata, lambda n, m=model: example.local(m), 6, seed=3)
            assert [(row[0], row[1]) for row in remote] == [
                (layout, p) for layout in layouts for p in ("model", "random")
            ]
            for (layout, policy, served_steps), (_, _, local_steps) in zip(remote, here, strict=True):
                np.testing.assert_array_equal(served_steps, local_steps, err_msg=f"{name} {layout} {policy}")
            model_steps, random_steps = remote[0][2], remote[1][2]
            assert model_steps.mean() > 1.5 * random_steps.mean()  # trained layout (L1) or fresh ones (L2)
            assert (model_steps > 1).all()


@pytest.mark.slow  # starts a Python process
def test_help_needs_no_torch() -> None:
    blocked = (
        "import sys, runpy; sys.modules['torch'] = None; sys.argv = ['gym_evaluate.py', '--help']; "
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--checkpoint" in done.stdout and "--target" in done.stdout
    done = subprocess.run(  # the same guard does stop a script that imports torch
        [sys.executable, "-c", "import sys; sys.modules['torch'] = None; from townlet.inference import HamletModel"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "torch" in done.stderr


@pytest.mark.slow  # starts a Python process
def test_the_script_prints_a_table_per_demo_model(server: ThreadedServer) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--target", server.target, "--episodes", "4", "--seed", "1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    titles = [line.split()[0] for line in done.stdout.splitlines() if " served by " in line]
    assert titles == ["townlet-L1-mlp", "townlet-L2-lstm"]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip().startswith(("trained", "fresh"))]
    assert [(r[0], r[-4]) for r in rows] == [
        ("trained", "model"), ("trained", "random"), ("fresh", "model"), ("fresh", "random"),  # L1
        ("fresh", "model"), ("fresh", "random"),  # L2: trained on a fresh layout per episode
    ]  # fmt: skip
