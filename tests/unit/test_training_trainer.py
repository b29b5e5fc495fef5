"""The compact DQN trainer: both checkpoint kinds, exact reloads, resume, determinism, config checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from townlet.env import AFFORDANCE_NAMES
from townlet.inference import HamletModel
from townlet.training.config import TrainConfig
from townlet.training.errors import ResumeError, TrainingConfigError
from townlet.training.trainer import latest_checkpoint, train

LEVEL = {"simple": "L1", "recurrent": "L2"}

# Every key of Hamlet's v2 layout (reference section 4).
TOP_KEYS = {
    "version", "episode", "timestamp", "population_state", "curriculum_state", "affordance_layout",
    "agent_ids", "epsilon", "training_config", "config_dir",
}  # fmt: skip
POPULATION_KEYS = {
    "version", "q_network", "optimizer", "total_steps", "exploration_state", "universe_metadata",
    "target_network", "training_step_counter", "replay_buffer",
}  # fmt: skip


def tiny(network_type: str, out: Path, **changes: object) -> TrainConfig:
    """A run of a few seconds: 2 envs, small buffer and batches, learning from the first steps."""
    base = TrainConfig(
        level=LEVEL[network_type],
        episodes=2,
        out=str(out),
        seed=3,
        num_envs=2,
        buffer_capacity=600,
        batch_size=8 if network_type == "simple" else 4,
        sequence_length=4,
        learning_starts=32,
        train_frequency=2 if network_type == "simple" else 8,
        target_update_frequency=10,
        epsilon_decay=0.5,
        checkpoint_every=1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_writes_both_checkpoint_kinds_that_reload_exactly(tmp_path: Path, network_type: str) -> None:
    config = tiny(network_type, tmp_path / "run")
    result = train(config)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["checkpoint_ep00001.pt", "checkpoint_ep00002.pt", "model_ep00001.pt", "model_ep00002.pt"]
    assert result.episode == 2 and [p.name for p in result.models] == ["model_ep00001.pt", "model_ep00002.pt"]

    obs = torch.rand(5, result.q_network.obs_dim)
    with torch.no_grad():
        expected, _ = result.q_network(obs)
    model = HamletModel.load_from_checkpoint(tmp_path / "run" / "model_ep00002.pt")
    from_training = HamletModel.load_from_training_checkpoint(tmp_path / "run" / "checkpoint_ep00002.pt")
    for loaded in (model, from_training, HamletModel.load(tmp_path / "run" / "checkpoint_ep00002.pt")):
        assert loaded.metadata["network_type"] == network_type
        assert torch.equal(loaded.forward(obs)[0], expected)
    assert model.metadata["episode"] == 2 and model.metadata["level"] == LEVEL[network_type]
    assert model.metadata["epsilon"] == pytest.approx(0.25)  # epsilon of the next episode: 1.0 * 0.5**2
    assert list(model.metadata["affordance_layout"]) == list(AFFORDANCE_NAMES)  # the fixed training layout
    assert model.metadata["source_checkpoint"] == "checkpoint_ep00002.pt"


def test_training_checkpoint_has_hamlet_v2_layout(tmp_path: Path, network_type: str) -> None:
    train(tiny(network_type, tmp_path, checkpoint_every=2))  # the LSTM stores episodes at the end of a round
    checkpoint = torch.load(tmp_path / "checkpoint_ep00002.pt", weights_only=True)  # plain data only
    assert set(checkpoint) == TOP_KEYS and set(checkpoint["population_state"]) == POPULATION_KEYS
    assert checkpoint["version"] == 2 and checkpoint["episode"] == 2
    population = checkpoint["population_state"]
    assert population["training_step_counter"] > 0 and population["total_steps"] > 0
    assert population["optimizer"]["state"], "Adam state after real gradient steps"
    replay = population["replay_buffer"]
    if network_type == "simple":
        assert replay["observations"].shape == (600, 91) and 0 < replay["size"] <= 600
    else:
        assert 1 <= len(replay["episodes"]) <= 4 and replay["num_transitions"] == sum(
            e["actions"].shape[0] for e in replay["episodes"]
        )
    assert checkpoint["training_config"]["population"]["network_type"] == network_type
    assert sorted(checkpoint["affordance_layout"]["positions"]) == sorted(checkpoint["affordance_layout"]["ordering"])


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path, network_type: str) -> None:
    straight = train(tiny(network_type, tmp_path / "straight", episodes=3))
    train(tiny(network_type, tmp_path / "split", episodes=2))
    resumed = train(tiny(network_type, tmp_path / "split", episodes=3), resume=True)
    assert resumed.episode == 3 and [p.name for p in resumed.checkpoints] == ["checkpoint_ep00003.pt"]
    a = torch.load(tmp_path / "straight" / "checkpoint_ep00003.pt", weights_only=True)["population_state"]
    b = torch.load(tmp_path / "split" / "checkpoint_ep00003.pt", weights_only=True)["population_state"]
    assert (a["total_steps"], a["training_step_counter"]) == (b["total_steps"], b["training_step_counter"])
    assert same_state(a["q_network"], b["q_network"]) and same_state(a["target_network"], b["target_network"])
    assert same_state(straight.q_network.state_dict(), resumed.q_network.state_dict())


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    first = train(tiny("simple", tmp_path / "a", episodes=1))
    second = train(tiny("simple", tmp_path / "b", episodes=1))
    other = train(tiny("simple", tmp_path / "c", episodes=1, seed=4))
    assert same_state(first.q_network.state_dict(), second.q_network.state_dict())
    assert not same_state(first.q_network.state_dict(), other.q_network.state_dict())


def test_refuses_to_mix_runs(tmp_path: Path) -> None:
    train(tiny("simple", tmp_path, episodes=1))
    with pytest.raises(ResumeError, match="already holds checkpoints"):
        train(tiny("simple", tmp_path, episodes=2))
    with pytest.raises(ResumeError, match="learning_rate"):
        train(tiny("simple", tmp_path, episodes=2, learning_rate=1e-3), resume=True)
    with pytest.raises(ResumeError, match="nothing to resume"):
        train(tiny("simple", tmp_path / "empty", episodes=2), resume=True)
    assert latest_checkpoint(tmp_path).name == "checkpoint_ep00001.pt"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"level": "L9"}, "level 'L9'"),
        ({"loss": "l1"}, "loss must be"),
        ({"num_envs": 0}, "num_envs must be >= 1"),
        ({"epsilon_min": 0.5, "epsilon_start": 0.1}, "epsilon_min"),
    ],
)
def test_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(TrainingConfigError, match=message):
        TrainConfig(**changes)  # type: ignore[arg-type]


def test_lstm_on_a_full_observability_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingConfigError, match="partial-observability"):
        train(tiny("simple", tmp_path, network="recurrent"))


def test_epsilon_schedule() -> None:
    config = TrainConfig(epsilon_start=1.0, epsilon_decay=0.9, epsilon_min=0.3)
    assert [round(config.epsilon_at(k), 4) for k in (0, 1, 2, 20)] == [1.0, 0.9, 0.81, 0.3]
