"""``hamlet-train evaluate`` and the evaluation functions behind it; the CLI's train/resume path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import townlet.env
from townlet.agent.networks import SimpleQNetwork
from townlet.env import (
    AFFORDANCE_NAMES,
    NO_AFFORDANCE,
    Action,
    layout_from_positions,
    run_random_policy,
    training_layout,
)
from townlet.env.evaluation import play_episodes
from townlet.inference import HamletModel, save_inference_checkpoint
from townlet.training.cli import main
from townlet.training.evaluate import (
    SurvivalStats,
    evaluate_model,
    evaluate_random,
    play_model,
    play_random,
    run_episodes,
    unseen_layouts,
)


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


def test_there_is_one_random_baseline() -> None:
    # The env package's helper is the baseline everywhere: evaluate_random is the same function, the
    # CLI's play_random plays the same episodes, and the remaining callers import one of these names.
    assert evaluate_random is run_random_policy is townlet.env.run_random_policy
    steps = run_random_policy("L1", 50, seed=3)
    np.testing.assert_array_equal(play_random("L1", 50, seed=3).steps, steps)
    root = Path(__file__).resolve().parents[2]
    sources = [*root.glob("examples/*.py"), *root.glob("scripts/*.py"), *root.glob("bench/*.py")]
    sources += [*root.glob("server/**/*.py")]
    for path in sources:
        text = path.read_text()
        if path.name != "evaluation.py":
            assert "def random_policy" not in text and "def run_random_policy" not in text, path
    # The Gymnasium example draws its random actions with the same function, over Gymnasium's int8 masks made bool.
    example = (root / "examples/gym_evaluate.py").read_text()
    assert "random_valid_actions(masks, sampler)" in example and 'info["action_mask"].astype(bool)' in example


def test_affordances_count_distinct_successful_uses(wait_model: Path) -> None:
    waited = play_model(HamletModel.load(wait_model), "L1", 4, seed=5)
    assert waited.affordances.tolist() == [0, 0, 0, 0]  # waiting never interacts
    layout = training_layout("L1", 0)

    def bed_then_shower(obs: np.ndarray, masks: np.ndarray, step: object) -> tuple[np.ndarray, object]:
        # Start on the Bed (layouts put one agent there via set_state below), interact twice, then wait.
        k = 0 if step is None else int(step)  # type: ignore[call-overload]
        return np.full(len(obs), Action.INTERACT if k < 2 else Action.WAIT), k + 1

    results = play_episodes("L1", bed_then_shower, 3, seed=1, layout=layout)
    assert results.steps.shape == results.affordances.shape == (3,)
    assert set(results.affordances.tolist()) <= {0, 1}  # at most the one affordance under the start cell
    random = play_random("L1", 40, seed=0)
    assert 0 < random.affordances.mean() <= 14 and random.affordances.max() <= 14


def test_evaluate_prints_both_policies(wait_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(wait_model), "--level", "L1", "--episodes", "8", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["model"], ["random"])}
    model = SurvivalStats.of_results(play_model(HamletModel.load(wait_model), "L1", 8, seed=2))
    random = SurvivalStats.of_results(play_random("L1", 8, seed=2))
    assert float(lines["model"][1]) == pytest.approx(model.mean, abs=0.05)
    assert float(lines["random"][1]) == pytest.approx(random.mean, abs=0.05)
    assert float(lines["random"][3]) == pytest.approx(random.median, abs=0.05)
    assert float(lines["model"][6]) == 0.0 and float(lines["random"][6]) == pytest.approx(
        random.mean_affordances, abs=0.005
    )
    assert random.mean_affordances is not None and random.mean_affordances > 0
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


# --- unseen layouts ---------------------------------------------------------------------------------------


def test_unseen_layouts_never_repeat_the_trained_layout() -> None:
    # L0_0 has only 9 layouts (one Bed on a 3x3 grid): 60 draws hit the trained one unless it is excluded.
    trained = training_layout("L0_0", 0)
    grid = layout_from_positions(trained, 3, ("Bed",))
    free = unseen_layouts("L0_0", 60, seed=0)
    assert any(np.array_equal(layout, grid) for layout in free)
    unseen = unseen_layouts("L0_0", 60, seed=0, exclude=[trained])
    assert unseen.shape == (60, 3, 3)
    assert not any(np.array_equal(layout, grid) for layout in unseen)
    assert len({layout.tobytes() for layout in unseen}) == 8  # every other layout turns up
    np.testing.assert_array_equal(unseen, unseen_layouts("L0_0", 60, seed=0, exclude=[trained]))


def test_unseen_layouts_hold_the_level_affordances_and_differ_from_the_seed_layout() -> None:
    layouts = unseen_layouts("L1", 20, seed=3)
    for layout in layouts:
        assert sorted(layout[layout != NO_AFFORDANCE].tolist()) == list(range(14))
    seed_layout = layout_from_positions(training_layout("L1", 3), 8, AFFORDANCE_NAMES)
    assert not any(np.array_equal(layout, seed_layout) for layout in layouts)


def test_each_episode_plays_on_its_own_given_layout() -> None:
    layouts = unseen_layouts("L1", 5, seed=1)
    first_obs: list[np.ndarray] = []

    def record(obs: np.ndarray, masks: np.ndarray, carry: object) -> tuple[np.ndarray, object]:
        if carry is None:
            first_obs.append(obs.copy())
        return np.full(len(obs), Action.WAIT), True

    run_episodes("L1", record, 5, seed=2, layouts=layouts, max_parallel=2)  # batches of 2, 2, 1 (wrapped)
    seen = np.concatenate(first_obs)[:5]  # batches of 2 envs: rows 0-4 are episodes 0-4
    for obs, layout in zip(seen, layouts, strict=True):
        grid, expected = obs[:64], layout.reshape(64) != NO_AFFORDANCE
        assert grid.sum() == 15  # 14 affordances + the agent
        assert (grid[expected] >= 1).all()  # every affordance of this episode's layout is where it should be
        assert (grid[~expected] >= 1).sum() <= 1  # elsewhere at most the agent's cell


def test_evaluate_compare_prints_trained_and_unseen_rows(wait_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", str(wait_model), "--level", "L1", "--episodes", "4", "--layout", "compare"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split()[:2] for line in lines if line.startswith(("trained", "unseen"))]
    assert rows == [["trained", "model"], ["trained", "random"], ["unseen", "model"], ["unseen", "random"]]
    assert "ratio of mean survival, model to random: trained" in lines[-2] and "unseen" in lines[-2]
    assert lines[-1].startswith("afford: mean number of different affordances used")
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"trained", "unseen"} and report["unseen"]["model_stats"]["episodes"] == 4
