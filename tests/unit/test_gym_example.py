"""examples/gym_evaluate.py plays the L1 demo model through ``gymnasium.make_vec`` as the model README says."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest

from townlet.inference import HamletModel

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gym_evaluate.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gym_evaluate", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_model_survives_every_step_on_its_training_layout() -> None:
    example = _example()
    model = HamletModel.load(example.DEMO)
    layout = model.metadata["affordance_layout"]
    envs = gym.make_vec("Townlet/L1-v0", num_envs=6, vectorization_mode="vector_entry_point", layout=layout)

    def greedy(obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(obs, action_mask=masks.astype(bool)).actions)

    steps = example.survival(envs, greedy, seed=7)
    np.testing.assert_array_equal(steps, [500] * 6)  # the README's evaluation: every episode reaches the limit


@pytest.mark.slow  # starts a Python process
def test_example_prints_model_and_random_rows() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--episodes", "4", "--seed", "1"], capture_output=True, text=True, check=True
    )
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("trained", "fresh"))]
    # columns: layout words..., policy, mean, std, median
    assert [(r[0], r[-4]) for r in rows] == [
        ("trained", "model"),
        ("trained", "random"),
        ("fresh", "model"),
        ("fresh", "random"),
    ]
    assert float(rows[0][-3]) == 500.0
