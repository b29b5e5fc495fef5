"""DQN losses as pure functions of networks and replayed batches (no optimiser, no state).

Targets are vanilla DQN, as in Hamlet: ``r + gamma * max_a Q_target(s', a) * (1 - done)``. A time-limit
truncation is not ``done`` (it bootstraps). The recurrent loss unrolls both networks over a replayed window
from a zero LSTM state, like Hamlet, but bootstraps the window's last step from the stored next observation
instead of treating the window end as terminal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from townlet.agent.networks import RecurrentSpatialQNetwork
from townlet.training.replay import SequenceBatch, TransitionBatch

__all__ = ["sequence_td_loss", "td_loss", "unroll"]


def _elementwise(kind: str, prediction: Tensor, target: Tensor) -> Tensor:
    if kind == "huber":
        return F.smooth_l1_loss(prediction, target, reduction="none")
    return F.mse_loss(prediction, target, reduction="none")


def td_loss(q_network: nn.Module, target_network: nn.Module, batch: TransitionBatch, gamma: float, kind: str) -> Tensor:
    """Mean TD loss of a transition batch for a feed-forward network (scalar tensor with grad)."""
    q_values, _ = q_network(batch.obs)
    q_taken = q_values.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        next_q, _ = target_network(batch.next_obs)
        target = batch.rewards + gamma * next_q.max(dim=1).values * (~batch.dones).float()
    return _elementwise(kind, q_taken, target).mean()


def unroll(network: nn.Module, obs: Tensor) -> Tensor:
    """Q-values of ``network`` over ``obs [B, T, D]`` from a zero hidden state: ``[B, T, A]``.

    For `RecurrentSpatialQNetwork` this is its ``forward_sequence``: the encoders run once on all ``B*T``
    observations and the LSTM once on the sequence (several times faster than T ``forward`` calls).
    """
    if isinstance(network, RecurrentSpatialQNetwork):
        q_values: Tensor = network.forward_sequence(obs)[0]
        return q_values
    hidden = None
    per_step = []
    for t in range(obs.shape[1]):
        q_step, hidden = network(obs[:, t], hidden)
        per_step.append(q_step)
    return torch.stack(per_step, dim=1)


def sequence_td_loss(
    q_network: nn.Module, target_network: nn.Module, batch: SequenceBatch, gamma: float, kind: str
) -> Tensor:
    """Masked mean TD loss over replayed windows for the recurrent network (scalar tensor with grad)."""
    length = batch.actions.shape[1]
    q_values = unroll(q_network, batch.obs[:, :length])
    q_taken = q_values.gather(2, batch.actions.unsqueeze(2)).squeeze(2)
    with torch.no_grad():
        next_q = unroll(target_network, batch.obs)[:, 1:].max(dim=2).values
        target = batch.rewards + gamma * next_q * (~batch.dones).float()
    mask = batch.valid.float()
    return (_elementwise(kind, q_taken, target) * mask).sum() / mask.sum().clamp(min=1.0)
