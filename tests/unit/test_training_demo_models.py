"""The trained demo models committed under models/ load, carry their training record, and beat random."""

from __future__ import annotations

from pathlib import Path

import pytest

from townlet.inference import HamletModel
from townlet.training.evaluate import SurvivalStats, evaluate_model, evaluate_random

MODELS = Path(__file__).resolve().parents[2] / "models"
DEMOS = {"townlet-L1-mlp": ("L1", "simple"), "townlet-L2-lstm": ("L2", "recurrent")}


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_model_beats_random_on_its_level(name: str) -> None:
    level, network_type = DEMOS[name]
    files = sorted((MODELS / name).glob("model_ep*.pt"))
    if not files:
        pytest.skip(f"{name} is not in this checkout")
    model = HamletModel.load(files[-1])
    meta = model.metadata
    assert (meta["network_type"], meta["level"], meta["trainer"]) == (network_type, level, "townlet.training")
    assert meta["depletion_multiplier"] == 1.0 and meta["affordance_layout"]
    assert f"model_ep{meta['episode']:05d}.pt" in (MODELS / name / "README.md").read_text()
    layout = {k: tuple(v) for k, v in meta["affordance_layout"].items()}  # the layout it was trained on
    trained = SurvivalStats.of(evaluate_model(model, level, 20, seed=11, layout=layout))
    random = SurvivalStats.of(evaluate_random(level, 20, seed=11, layout=layout))
    assert trained.mean > 1.8 * random.mean and trained.median > random.max
