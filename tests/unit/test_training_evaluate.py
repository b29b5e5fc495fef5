"""``hamlet-train evaluate`` and the evaluation functions behind it; the CLI's train/resume path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from townlet.agent.networks import SimpleQNetwork
from townlet.env import Action, run_random_policy
from townlet.inference import HamletModel, save_inference_checkpoint
from townlet.training.cli import main
from townlet.training.evaluate import SurvivalStats, evaluate_model, evaluate_random, run_episodes


@pytest.fixture
def wait_model(tmp_path: Path) -> Path:
    """An MLP whose greedy action is always WAIT (bias only), saved as an inference checkpoint."""
    network = SimpleQNetwork(91, 6)
    with torch.no_grad():
        network.net[6].weight.zero_()
        network.net[6].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
    return save_inference_checkpoint(network, tmp_path / "model_ep00001.pt", {"episode": 1})


def test_stats_of_steps() -> None:
    stats = SurvivalStats.of(np.array([10, 20, 30, 100]))
    assert (stats.episodes, stats.mean, stats.median, stats.min, stats.max) == (4, 40.0, 25.0, 10, 100)
    assert stats.std == pytest.approx(np.std([10, 20, 30, 100]))


def test_policies_face_the_same_episodes(wait_model: Path) -> None:
    model = HamletModel.load(wait_model)
    waited = evaluate_model(model, "L1", 6, seed=5)
    # Always waiting costs the same every step whatever the start cell: every episode lasts equally long.
    assert waited.shape == (6,) and len(set(waited.tolist())) == 1
    assert np.array_equal(evaluate_random("L1", 6, seed=5), evaluate_random("L1", 6, seed=5))
    assert not np.array_equal(evaluate_random("L1", 6, seed=5), evaluate_random("L1", 6, seed=6))
    # The start cells come from the seed alone, so any two policies see the same ones.
    starts = []
    for _ in range(2):
        seen: list[np.ndarray] = []

        def record(obs: np.ndarray, masks: np.ndarray, carry: object, seen: list = seen) -> tuple[np.ndarray, None]:
            seen.append(obs.copy())
            return np.full(len(obs), Action.WAIT), None

        run_episodes("L1", record, 3, seed=9, max_parallel=2)
        starts.append(seen[0])
    assert np.array_equal(starts[0], starts[1])


def test_random_baseline_is_in_line_with_the_env_helper() -> None:
    ours = evaluate_random("L1", 100, seed=0)
    helper = run_random_policy("L1", 100, seed=0)
    assert abs(ours.mean() - helper.mean()) < 15  # same policy, other draws: the same ballpark


def test_evaluate_prints_both_policies(wait_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(wait_model), "--level", "L1", "--episodes", "8", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["model"], ["random"])}
    model = SurvivalStats.of(evaluate_model(HamletModel.load(wait_model), "L1", 8, seed=2))
    random = SurvivalStats.of(evaluate_random("L1", 8, seed=2))
    assert float(lines["model"][1]) == pytest.approx(model.mean, abs=0.05)
    assert float(lines["random"][1]) == pytest.approx(random.mean, abs=0.05)
    assert float(lines["random"][3]) == pytest.approx(random.median, abs=0.05)
    assert "layout seed (the model records no training layout)" in out and "mean" in out and "median" in out

    assert main(["evaluate", str(wait_model), "--level", "L1", "--episodes", "8", "--seed", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_stats"] == model.to_dict() and report["random_stats"] == random.to_dict()


def test_evaluate_on_the_wrong_level_is_a_user_error(wait_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(wait_model), "--level", "L2", "--episodes", "2"]) == 2
    assert "width 91" in capsys.readouterr().err
    assert main(["evaluate", str(wait_model.parent / "missing.pt"), "--level", "L1"]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err


def test_cli_trains_resumes_and_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    small = ["--num-envs", "2", "--buffer-capacity", "500", "--batch-size", "8", "--learning-starts", "16"]
    common = ["--level", "L1", "--out", str(out), "--seed", "1", "--quiet", *small, "--train-frequency", "4"]
    assert main([*common, "--episodes", "1"]) == 0
    assert main(["--out", str(out), "--episodes", "2", "--resume", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint_ep00001.pt", "checkpoint_ep00002.pt", "model_ep00001.pt", "model_ep00002.pt",
    ]  # fmt: skip
    assert main([*common, "--episodes", "3"]) == 2  # not without --resume
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["evaluate", str(out / "model_ep00002.pt"), "--level", "L1", "--episodes", "4"]) == 0
    assert "layout trained" in capsys.readouterr().out


def test_train_help_comes_from_the_config_docs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "hard copy online -> target every this many gradient steps (default: 500)" in text
