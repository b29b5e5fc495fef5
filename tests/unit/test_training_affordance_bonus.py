"""The episodic affordance bonus: paid once per affordance type per env episode, to the learner only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_trainer import same_state, tiny  # tests/unit is on sys.path (rootdir conftest)

from townlet.env import NUM_AFFORDANCE_TYPES, Action
from townlet.training.config import TrainConfig
from townlet.training.errors import TrainingConfigError
from townlet.training.replay import ReplayBuffer
from townlet.training.trainer import EpisodeStats, _first_use_bonus, train

ONE_HOT = slice(35, 35 + NUM_AFFORDANCE_TYPES + 1)  # L2 observation: the affordance under the agent


def test_bonus_is_paid_on_the_first_use_of_each_type_per_env_only() -> None:
    used = np.zeros((3, NUM_AFFORDANCE_TYPES), dtype=bool)
    first = _first_use_bonus(2.5, used, np.array([4, 4, -1]))
    assert first.dtype == np.float32 and first.tolist() == [2.5, 2.5, 0.0]  # two envs, each its first use of type 4
    again = _first_use_bonus(2.5, used, np.array([4, 7, 4]))
    assert again.tolist() == [0.0, 2.5, 2.5]
    assert used.sum() == 4 and used[0, 4] and used[1, 4] and used[1, 7] and used[2, 4]
    off = np.zeros((3, NUM_AFFORDANCE_TYPES), dtype=bool)
    assert _first_use_bonus(0.0, off, np.array([1, 2, 3])).tolist() == [0.0, 0.0, 0.0] and not off.any()


def test_recurrent_run_stores_the_bonus_at_first_interactions_and_never_in_the_env_reward(tmp_path: Path) -> None:
    bonus = 3.0
    seen: list[EpisodeStats] = []
    plain_run = train(tiny("recurrent", tmp_path / "plain"), on_episode=seen.append)
    shaped = train(tiny("recurrent", tmp_path / "bonus", affordance_bonus=bonus), on_episode=seen.append)
    assert seen[0].mean_return == seen[2].mean_return  # epsilon 1 in episode 1: same actions, same env reward
    plain_episodes, bonus_episodes = (
        torch.load(tmp_path / run / "checkpoint_ep00001.pt", weights_only=True)["population_state"]["replay_buffer"][
            "episodes"
        ]
        for run in ("plain", "bonus")
    )
    paid = 0
    for plain, boosted in zip(plain_episodes, bonus_episodes, strict=True):
        assert torch.equal(plain["actions"], boosted["actions"]) and torch.equal(
            plain["observations"], boosted["observations"]
        )
        assert torch.equal(boosted["rewards_extrinsic"], plain["rewards_extrinsic"]) and "rewards_shaping" not in plain
        extra = boosted["rewards_shaping"].numpy()
        steps = np.flatnonzero(extra)
        assert np.allclose(extra[steps], bonus)
        # each payment is an INTERACT, on a different affordance type each time within the env episode
        assert (plain["actions"].numpy()[steps] == Action.INTERACT).all()
        types = plain["observations"].numpy()[steps, ONE_HOT].argmax(axis=1)
        assert (types < NUM_AFFORDANCE_TYPES).all() and len(set(types.tolist())) == len(types)
        paid += len(steps)
    assert paid > 0  # random play on L2 uses a few affordances per episode
    # episode 2 learns from episode 1's replay, bonus included
    assert not same_state(plain_run.q_network.state_dict(), shaped.q_network.state_dict())


def test_negative_bonus_is_refused() -> None:
    with pytest.raises(TrainingConfigError, match="affordance_bonus must be >= 0"):
        TrainConfig(affordance_bonus=-1.0)


def test_transition_replay_adds_shaping_to_the_extrinsic_reward_and_keeps_it_across_a_round_trip() -> None:
    buffer = ReplayBuffer(4, 2)
    buffer.push(torch.zeros(4, 2), torch.zeros(4), torch.full((4,), 0.5), torch.zeros(4, 2), torch.zeros(4),
                shaping=torch.tensor([0.0, 2.0, 0.0, 2.0]))  # fmt: skip
    batch = buffer.sample(16, torch.Generator().manual_seed(0))
    assert set(batch.rewards.tolist()) == {0.5, 2.5}
    state = buffer.state_dict()
    assert torch.equal(state["rewards_extrinsic"], torch.full((4,), 0.5))
    again = ReplayBuffer.from_state_dict(state, 2).sample(16, torch.Generator().manual_seed(0))
    assert torch.equal(again.rewards, batch.rewards)
    del state["rewards_shaping"]  # a checkpoint written before shaping existed loads with none
    assert set(
        ReplayBuffer.from_state_dict(state, 2).sample(16, torch.Generator().manual_seed(0)).rewards.tolist()
    ) == {0.5}


def test_mlp_run_with_the_bonus_stores_it_beside_the_env_reward(tmp_path: Path) -> None:
    train(tiny("simple", tmp_path / "plain", episodes=1))
    train(tiny("simple", tmp_path / "bonus", episodes=1, affordance_bonus=1.5))
    plain, boosted = (
        torch.load(tmp_path / run / "checkpoint_ep00001.pt", weights_only=True)["population_state"]["replay_buffer"]
        for run in ("plain", "bonus")
    )
    assert torch.equal(plain["rewards_extrinsic"], boosted["rewards_extrinsic"])
    assert "rewards_shaping" not in plain  # a run without the bonus stores no shaping
    paid = boosted["rewards_shaping"][: boosted["size"]]
    assert set(paid.unique().tolist()) == {0.0, 1.5} and bool(
        (boosted["actions"][: boosted["size"]][paid > 0] == Action.INTERACT).all()
    )
