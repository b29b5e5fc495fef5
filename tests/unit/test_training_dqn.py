"""The recurrent-DQN options: n-step targets, double DQN, R2D2 burn-in with stored state, and their wiring."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.training.config import TrainConfig
from townlet.training.dqn import bootstrap_values, burn_in_state, n_step_targets, sequence_td_loss, td_loss, unroll
from townlet.training.errors import TrainingConfigError
from townlet.training.replay import SequenceBatch, SequenceReplayBuffer, TransitionBatch
from townlet.training.trainer import train

GAMMA = 0.5  # powers of a half are exact in float32: targets compare with ==


def row(*values: float | bool, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.tensor([list(values)], dtype=dtype)


def test_n_step_target_is_the_discounted_sum_then_the_bootstrap() -> None:
    rewards, values = row(1, 2, 4, 8), row(10, 20, 30, 40, 50)
    no, yes = row(False, False, False, False, dtype=torch.bool), row(True, True, True, True, dtype=torch.bool)
    targets, mask = n_step_targets(rewards, no, yes, yes, values, GAMMA, n=3)
    # t=0: 1 + .5*2 + .25*4 + .125*V(s3)=40; t=1: 2 + .5*4 + .25*8 + .125*V(s4)=50
    assert targets.tolist() == [[1 + 1 + 1 + 5.0, 2 + 2 + 2 + 6.25]] and mask.tolist() == [[True, True]]


def test_n_step_target_stops_at_a_death_without_bootstrap() -> None:
    rewards, values = row(1, 2, 4, 0), row(10, 20, 30, 40, 50)
    dones = row(False, True, False, False, dtype=torch.bool)  # died on step 1; steps 2, 3 are padding
    present = valid = row(True, True, False, False, dtype=torch.bool)
    targets, mask = n_step_targets(rewards, dones, present, valid, values, GAMMA, n=3)
    assert targets.tolist() == [[1 + 0.5 * 2, 2.0]] and mask.tolist() == [[True, True]]


def test_n_step_target_is_shortened_at_a_truncation() -> None:
    # The episode was truncated on step 2: its next observation was never stored, so step 2 has no target
    # and steps 0 and 1 bootstrap from V(s2), the last stored observation, after 2 and 1 rewards.
    rewards, values = row(1, 2, 4, 0, 0), row(10, 20, 30, 0, 0, 0)
    dones = row(False, False, False, False, False, dtype=torch.bool)
    present = row(True, True, True, False, False, dtype=torch.bool)
    valid = row(True, True, False, False, False, dtype=torch.bool)
    targets, mask = n_step_targets(rewards, dones, present, valid, values, GAMMA, n=3)
    assert targets.tolist() == [[1 + 0.5 * 2 + 0.25 * 30, 2 + 0.5 * 30, 0.0]]
    assert mask.tolist() == [[True, True, False]]


def test_one_step_targets_are_vanilla_dqn() -> None:
    torch.manual_seed(0)
    rewards, values = torch.rand(3, 4), torch.rand(3, 5)
    dones = torch.tensor([[False, False, False, True]] * 3)
    ones = torch.ones(3, 4, dtype=torch.bool)
    targets, _ = n_step_targets(rewards, dones, ones, ones, values, 0.9, n=1)
    assert torch.allclose(targets, rewards + 0.9 * values[:, 1:] * (~dones).float())
    with pytest.raises(ValueError, match="n - 1 more steps"):
        n_step_targets(rewards, dones, ones, ones, values, 0.9, n=5)


def test_double_dqn_picks_by_the_online_net_and_values_by_the_target() -> None:
    target_q = torch.tensor([[1.0, 5.0, 3.0], [7.0, 0.0, 2.0]])
    online_q = torch.tensor([[0.0, 0.0, 9.0], [0.0, 4.0, 1.0]])  # argmax 2, 1
    assert bootstrap_values(target_q).tolist() == [5.0, 7.0]
    assert bootstrap_values(target_q, online_q).tolist() == [3.0, 0.0]


class _Fixed(nn.Module):
    """Q(s) = the first A entries of s: lets a test choose every Q-value."""

    def forward(self, obs: Tensor, hidden: object = None) -> tuple[Tensor, None]:
        return obs[:, :2] * 1.0, None


def test_double_td_loss_uses_the_target_value_of_the_online_argmax() -> None:
    online, target = SimpleQNetwork(2, 2), _Fixed()
    with torch.no_grad():  # online Q(s') prefers action 1 everywhere; the target values action 1 at s'[1]
        for layer in online.net:
            if isinstance(layer, nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        online.net[-1].bias.copy_(torch.tensor([0.0, 1.0]))
    batch = TransitionBatch(
        torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0.0]), torch.tensor([[9.0, 3.0]]), torch.tensor([False])
    )
    # q_taken is 0; the vanilla target is 0.5 * max(9, 3) = 4.5, the double target 0.5 * 3 = 1.5 (MSE).
    assert td_loss(online, target, batch, GAMMA, "mse").item() == pytest.approx(4.5**2)
    assert td_loss(online, target, batch, GAMMA, "mse", double=True).item() == pytest.approx(1.5**2)


def recurrent_pair() -> tuple[RecurrentSpatialQNetwork, RecurrentSpatialQNetwork]:
    torch.manual_seed(0)
    return RecurrentSpatialQNetwork(), RecurrentSpatialQNetwork()


def burn_in_batch(hidden: tuple[Tensor, Tensor], burn: int = 3, steps: int = 4) -> SequenceBatch:
    generator = torch.Generator().manual_seed(1)
    span = burn + steps
    ones = torch.ones(2, span, dtype=torch.bool)
    return SequenceBatch(
        torch.rand(2, span + 1, 54, generator=generator),
        torch.randint(6, (2, span), generator=generator),
        torch.rand(2, span, generator=generator),
        torch.zeros(2, span, dtype=torch.bool),
        ones,
        ones,
        burn,
        hidden,
    )


def test_burn_in_steps_carry_no_loss_and_no_gradient() -> None:
    online, target = recurrent_pair()
    hidden = (torch.rand(2, 256), torch.rand(2, 256))
    batch = burn_in_batch(hidden)
    loss = sequence_td_loss(online, target, batch, 0.9, "mse")
    # Changing the rewards and actions of the burn-in steps changes nothing.
    changed = dataclasses.replace(
        batch, rewards=batch.rewards.clone().index_fill_(1, torch.arange(3), 1e6), actions=batch.actions.roll(1, 1)
    )
    changed = dataclasses.replace(changed, actions=torch.cat([changed.actions[:, :3], batch.actions[:, 3:]], 1))
    assert torch.equal(loss, sequence_td_loss(online, target, changed, 0.9, "mse"))
    # No gradient reaches the burn-in observations; it does reach the trained ones.
    obs = batch.obs.clone().requires_grad_(True)
    sequence_td_loss(online, target, dataclasses.replace(batch, obs=obs), 0.9, "mse").backward()
    assert obs.grad is not None and obs.grad[:, :3].abs().sum() == 0 and obs.grad[:, 3:].abs().sum() > 0


def test_burn_in_starts_from_the_stored_state() -> None:
    online, target = recurrent_pair()
    hidden = (torch.rand(2, 256), torch.rand(2, 256))
    batch = burn_in_batch(hidden)
    expected_start = burn_in_state(online, batch.obs[:, :3], batch.present[:, :3], hidden)
    manual = unroll(online, batch.obs[:, 3:7], expected_start).gather(2, batch.actions[:, 3:, None]).squeeze(2)
    with torch.no_grad():
        target_start = burn_in_state(target, batch.obs[:, :3], batch.present[:, :3], hidden)
        next_q = unroll(target, batch.obs[:, 3:], target_start)[:, 1:].max(dim=2).values
    expected = ((manual - (batch.rewards[:, 3:] + 0.9 * next_q)) ** 2).mean()
    assert torch.allclose(sequence_td_loss(online, target, batch, 0.9, "mse"), expected)
    other = dataclasses.replace(batch, hidden=(torch.zeros(2, 256), torch.zeros(2, 256)))
    assert not torch.allclose(sequence_td_loss(online, target, other, 0.9, "mse"), expected)


def test_burn_in_skips_padding_in_front_of_an_episode() -> None:
    online, _ = recurrent_pair()
    hidden = (torch.rand(1, 256), torch.rand(1, 256))
    obs = torch.rand(1, 3, 54)
    absent_first = burn_in_state(online, obs, torch.tensor([[False, True, True]]), hidden)
    assert torch.equal(
        absent_first[0], burn_in_state(online, obs[:, 1:], torch.ones(1, 2, dtype=torch.bool), hidden)[0]
    )
    untouched = burn_in_state(online, obs, torch.zeros(1, 3, dtype=torch.bool), hidden)
    assert torch.equal(untouched[0][0], hidden[0]) and torch.equal(untouched[1][0], hidden[1])


def test_replay_windows_hold_burn_in_and_n_step_tails_and_the_stored_state() -> None:
    buffer = SequenceReplayBuffer(capacity=100)
    length = 6
    obs = torch.arange(length, dtype=torch.float32)[:, None].expand(length, 4)
    hidden = (torch.arange(length, dtype=torch.float32)[:, None].expand(length, 3) + 0.5, torch.zeros(length, 3))
    dones = torch.zeros(length, dtype=torch.bool)
    dones[-1] = True
    buffer.push_episode(obs, torch.arange(length), torch.ones(length), dones, hidden)
    batch = buffer.sample(40, 2, torch.Generator().manual_seed(0), burn_in=2, n_step=3)
    assert batch.obs.shape == (40, 2 + 2 + 2 + 1, 4) and batch.actions.shape == (40, 6) and batch.burn_in == 2
    assert batch.hidden is not None
    for r in range(40):
        present = batch.present[r].tolist()
        j0 = present.index(True)
        offset = int(batch.actions[r, j0]) - j0  # window position j holds episode step offset + j
        assert present == [0 <= offset + j < length for j in range(6)]
        assert all(int(batch.actions[r, j]) == offset + j for j in range(6) if present[j])
        assert torch.equal(batch.obs[r, j0 : j0 + 1, 0], torch.tensor([float(offset + j0)]))
        assert batch.hidden[0][r, 0].item() == max(offset, 0) + 0.5  # the state stored before the first step
    with pytest.raises(RuntimeError, match="stored with each episode"):
        bare = SequenceReplayBuffer(capacity=100)
        bare.push_episode(obs, torch.arange(length), torch.ones(length), dones)
        bare.sample(2, 2, torch.Generator().manual_seed(0), burn_in=1)


def test_default_sampling_is_unchanged_by_the_new_options() -> None:
    buffer = SequenceReplayBuffer(capacity=100)
    for k in range(3):
        buffer.push_episode(torch.rand(5 + k, 4), torch.arange(5 + k), torch.rand(5 + k), torch.zeros(5 + k).bool())
    a = buffer.sample(16, 4, torch.Generator().manual_seed(3))
    b = buffer.sample(16, 4, torch.Generator().manual_seed(3), burn_in=0, n_step=1)
    assert a.hidden is None and torch.equal(a.obs, b.obs) and torch.equal(a.valid, b.valid)
    assert torch.equal(a.present, a.valid | (a.present & ~a.valid))  # valid implies present


def test_options_are_validated_and_listed(tmp_path: Path) -> None:
    with pytest.raises(TrainingConfigError, match="n_step >= 1"):
        TrainConfig(level="L2", n_step=0)
    with pytest.raises(TrainingConfigError, match="apply to the LSTM"):
        TrainConfig(level="L1", burn_in=4)
    config = TrainConfig(level="L2", double_dqn=True, n_step=3, burn_in=4)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_a_run_with_every_option_resumes_exactly(tmp_path: Path) -> None:
    base = TrainConfig(
        level="L2", episodes=3, out=str(tmp_path / "straight"), seed=2, num_envs=2, buffer_capacity=600,
        batch_size=4, sequence_length=4, learning_starts=32, train_frequency=8, target_update_frequency=10,
        epsilon_decay=0.5, double_dqn=True, n_step=3, burn_in=2, relayout=True,
    )  # fmt: skip
    straight = train(base)
    train(dataclasses.replace(base, out=str(tmp_path / "split"), episodes=2))
    resumed = train(dataclasses.replace(base, out=str(tmp_path / "split")), resume=True)
    for key, value in straight.q_network.state_dict().items():
        assert torch.equal(value, resumed.q_network.state_dict()[key]), key
    saved = torch.load(tmp_path / "split" / "checkpoint_ep00003.pt", weights_only=True)
    episodes = saved["population_state"]["replay_buffer"]["episodes"]
    assert {"hidden_h", "hidden_c"} <= set(episodes[0]) and episodes[0]["hidden_h"].shape[1] == 256
    assert episodes[0]["hidden_h"][0].abs().sum() == 0  # each episode starts from the zero state
    assert saved["training_config"]["townlet_trainer"]["n_step"] == 3
