"""Replay buffers (circular storage, windows and their masks, Hamlet layout round trips) and the TD losses."""

from __future__ import annotations

import torch

from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.training.dqn import sequence_td_loss, td_loss, unroll
from townlet.training.replay import ReplayBuffer, SequenceBatch, SequenceReplayBuffer, TransitionBatch


def push_numbered(buffer: ReplayBuffer, first: int, count: int) -> None:
    ids = torch.arange(first, first + count, dtype=torch.float32)
    obs = ids[:, None].expand(count, buffer.obs_dim)
    buffer.push(obs, ids.long(), ids, obs + 0.5, ids % 2 == 0)


def test_replay_is_circular_and_round_trips_through_hamlet_layout() -> None:
    buffer = ReplayBuffer(capacity=5, obs_dim=3)
    assert buffer.state_dict()["observations"] is None  # empty: None tensors, as Hamlet saves them
    push_numbered(buffer, 0, 4)
    push_numbered(buffer, 4, 3)  # overwrites 0 and 1
    assert len(buffer) == 5
    state = buffer.state_dict()
    assert (state["size"], state["position"], state["capacity"]) == (5, 2, 5)
    assert state["observations"].shape == (5, 3) and state["rewards_intrinsic"].abs().sum() == 0
    assert sorted(state["actions"].tolist()) == [2, 3, 4, 5, 6]
    copy = ReplayBuffer.from_state_dict(state, obs_dim=3)
    a, b = buffer.sample(16, torch.Generator().manual_seed(1)), copy.sample(16, torch.Generator().manual_seed(1))
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("obs", "actions", "rewards", "next_obs", "dones"))
    assert torch.equal(a.next_obs, a.obs + 0.5) and torch.equal(a.dones, a.actions % 2 == 0)


def episode(length: int, start: float, done: bool) -> tuple[torch.Tensor, ...]:
    obs = torch.arange(start, start + length)[:, None].expand(length, 4).float()
    dones = torch.zeros(length, dtype=torch.bool)
    dones[-1] = done
    return obs, torch.arange(length), torch.ones(length), dones


def test_sequence_windows_mask_the_ends_of_episodes() -> None:
    buffer = SequenceReplayBuffer(capacity=100)
    buffer.push_episode(*episode(3, 0.0, done=True))  # died on its 3rd step
    buffer.push_episode(*episode(3, 100.0, done=False))  # truncated on its 3rd step
    batch = buffer.sample(64, 4, torch.Generator().manual_seed(0))
    assert batch.obs.shape == (64, 5, 4) and batch.valid.shape == (64, 4)
    for row in range(64):
        first = batch.obs[row, 0, 0].item()
        start = int(first) % 100
        steps = 3 - start
        truncated = first >= 100
        assert batch.valid[row].tolist() == [t < steps - (1 if truncated else 0) for t in range(4)]
        assert batch.dones[row].tolist() == [t == steps - 1 and not truncated for t in range(4)]
        assert torch.equal(batch.obs[row, :steps, 0], torch.arange(first, first + steps))
        assert batch.obs[row, steps:].abs().sum() == 0  # padding past the end


def test_sequence_buffer_evicts_whole_episodes_and_round_trips() -> None:
    buffer = SequenceReplayBuffer(capacity=10)
    for k in range(4):
        buffer.push_episode(*episode(4, 10.0 * k, done=True))
    assert (buffer.num_episodes, len(buffer)) == (2, 8)  # 16 transitions > 10: the two oldest episodes went
    state = buffer.state_dict()
    assert [e["observations"][0, 0].item() for e in state["episodes"]] == [20.0, 30.0]
    assert set(state["episodes"][0]) == {"observations", "actions", "rewards_extrinsic", "rewards_intrinsic", "dones"}
    copy = SequenceReplayBuffer.from_state_dict(state)
    a, b = buffer.sample(8, 3, torch.Generator().manual_seed(2)), copy.sample(8, 3, torch.Generator().manual_seed(2))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.valid, b.valid)


def test_td_loss_matches_the_vanilla_dqn_target() -> None:
    torch.manual_seed(0)
    online, target = SimpleQNetwork(5, 3), SimpleQNetwork(5, 3)
    batch = TransitionBatch(
        torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), torch.rand(4), torch.rand(4, 5), torch.tensor([0, 1, 0, 0]).bool()
    )
    q_taken = online(batch.obs)[0].gather(1, batch.actions[:, None]).squeeze(1)
    bootstrap = target(batch.next_obs)[0].max(dim=1).values * torch.tensor([1.0, 0.0, 1.0, 1.0])
    expected = ((q_taken - (batch.rewards + 0.9 * bootstrap)) ** 2).mean()
    assert torch.allclose(td_loss(online, target, batch, 0.9, "mse"), expected)
    assert td_loss(online, target, batch, 0.9, "huber") <= td_loss(online, target, batch, 0.9, "mse")


def test_fast_unroll_equals_step_by_step_forward() -> None:
    torch.manual_seed(0)
    network = RecurrentSpatialQNetwork()
    obs = torch.rand(3, 6, 54)
    hidden, steps = None, []
    for t in range(6):
        q_values, hidden = network(obs[:, t], hidden)
        steps.append(q_values)
    assert torch.allclose(unroll(network, obs), torch.stack(steps, dim=1), atol=1e-5)


def test_sequence_loss_ignores_invalid_steps() -> None:
    torch.manual_seed(0)
    online, target = RecurrentSpatialQNetwork(), RecurrentSpatialQNetwork()
    valid = torch.tensor([[True, True, False], [True, False, False]])
    batch = SequenceBatch(
        torch.rand(2, 4, 54), torch.zeros(2, 3, dtype=torch.long), torch.rand(2, 3), torch.zeros(2, 3).bool(), valid,
        valid,
    )  # fmt: skip
    changed = SequenceBatch(batch.obs, batch.actions, batch.rewards.masked_fill(~valid, 1e6), batch.dones, valid, valid)
    assert torch.equal(
        sequence_td_loss(online, target, batch, 0.99, "mse"), sequence_td_loss(online, target, changed, 0.99, "mse")
    )
