"""DQN losses as pure functions of networks and replayed batches (no optimiser, no state).

The default target is vanilla DQN, as in Hamlet: ``r + gamma * max_a Q_target(s', a) * (1 - done)``. A
time-limit truncation is not ``done`` (it bootstraps). Three options, each off by default:

- **double DQN** (van Hasselt et al. 2016): the next action is the online network's argmax, its value the
  target network's: ``Q_target(s', argmax_a Q_online(s', a))``.
- **n-step returns** (recurrent loss): ``sum_k gamma^k r_{t+k} + gamma^n V(s_{t+n})``, cut at a death (no
  bootstrap) and shortened at a truncation to bootstrap from the last stored observation (`n_step_targets`).
- **burn-in** (R2D2, Kapturowski et al. 2019): the window starts from the LSTM state stored when acting,
  the first ``burn_in`` steps only advance that state (no gradient, no loss), the loss is on the rest.

The recurrent loss unrolls both networks over a replayed window (from a zero LSTM state without burn-in,
like Hamlet) and bootstraps the window's last steps from the stored next observations instead of treating
the window end as terminal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from townlet.agent.networks import Hidden, RecurrentSpatialQNetwork
from townlet.training.replay import SequenceBatch, TransitionBatch

__all__ = ["bootstrap_values", "burn_in_state", "n_step_targets", "sequence_td_loss", "td_loss", "unroll"]


def _elementwise(kind: str, prediction: Tensor, target: Tensor) -> Tensor:
    if kind == "huber":
        return F.smooth_l1_loss(prediction, target, reduction="none")
    return F.mse_loss(prediction, target, reduction="none")


def bootstrap_values(target_q: Tensor, online_q: Tensor | None = None) -> Tensor:
    """State values for bootstrapping from Q-values ``[..., A]``: ``max_a target_q`` (vanilla DQN), or with
    ``online_q`` (double DQN) ``target_q`` at ``argmax_a online_q``. Returns ``[...]``."""
    if online_q is None:
        return target_q.max(dim=-1).values
    chosen = online_q.argmax(dim=-1, keepdim=True)
    return target_q.gather(-1, chosen).squeeze(-1)


def td_loss(
    q_network: nn.Module,
    target_network: nn.Module,
    batch: TransitionBatch,
    gamma: float,
    kind: str,
    *,
    double: bool = False,
) -> Tensor:
    """Mean TD loss of a transition batch for a feed-forward network (scalar tensor with grad)."""
    q_values, _ = q_network(batch.obs)
    q_taken = q_values.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        next_q, _ = target_network(batch.next_obs)
        next_online = q_network(batch.next_obs)[0] if double else None
        target = batch.rewards + gamma * bootstrap_values(next_q, next_online) * (~batch.dones).float()
    return _elementwise(kind, q_taken, target).mean()


def unroll(network: nn.Module, obs: Tensor, hidden: Hidden | None = None) -> Tensor:
    """Q-values of ``network`` over ``obs [B, T, D]`` from ``hidden`` (zeros if None): ``[B, T, A]``.

    For `RecurrentSpatialQNetwork` this is its ``forward_sequence``: the encoders run once on all ``B*T``
    observations and the LSTM once on the sequence (several times faster than T ``forward`` calls).
    """
    if isinstance(network, RecurrentSpatialQNetwork):
        q_values: Tensor = network.forward_sequence(obs, hidden)[0]
        return q_values
    per_step = []
    for t in range(obs.shape[1]):
        q_step, hidden = network(obs[:, t], hidden)
        per_step.append(q_step)
    return torch.stack(per_step, dim=1)


def burn_in_state(network: nn.Module, obs: Tensor, present: Tensor, hidden: tuple[Tensor, Tensor]) -> Hidden:
    """The LSTM state after running ``network`` without gradient over ``obs [B, K, D]`` from the stored
    ``hidden = (h [B, H], c [B, H])``. Steps with ``present [B, K]`` False (padding in front of an episode's
    first step) leave a row's state unchanged. Returns ``(h [1, B, H], c [1, B, H])``."""
    state: Hidden = (hidden[0].unsqueeze(0), hidden[1].unsqueeze(0))
    with torch.no_grad():
        for k in range(obs.shape[1]):
            _, stepped = network(obs[:, k], state)
            keep = present[:, k].view(1, -1, 1)
            state = (torch.where(keep, stepped[0], state[0]), torch.where(keep, stepped[1], state[1]))
    return state


def n_step_targets(
    rewards: Tensor, dones: Tensor, present: Tensor, valid: Tensor, values: Tensor, gamma: float, n: int
) -> tuple[Tensor, Tensor]:
    """n-step TD targets of the first ``L = S - n + 1`` steps of windows of ``S`` steps.

    Args:
        rewards, dones, present, valid: ``[B, S]`` (`SequenceBatch` fields: step exists; has a target).
        values: ``[B, S+1]`` bootstrap value of the observation before each step (and after the last).
        gamma: discount; n: horizon (>= 1).

    Returns:
        ``(targets [B, L], mask [B, L])``. Step t's target is ``sum_{k<m} gamma^k r_{t+k} + gamma^m
        values[t+m]`` with ``m = n``; the sum stops early at a death (no bootstrap term), and at a truncated
        episode's last step j (its next observation is not stored) it bootstraps from ``values[j]`` with
        ``m = j - t``. ``mask`` is False where step t has no target itself (absent, or truncated last step).
    """
    length = rewards.shape[1] - n + 1
    if length < 1:
        raise ValueError(f"windows of {rewards.shape[1]} steps hold no {n}-step target; sample n - 1 more steps")
    batch = rewards.shape[0]
    targets = torch.zeros(batch, length, dtype=values.dtype, device=values.device)
    running = torch.ones(batch, length, dtype=torch.bool, device=values.device)  # still summing rewards
    for k in range(n):
        j = slice(k, k + length)
        if k > 0:  # a truncated episode's last step: bootstrap from its (stored) observation
            cut = running & ~valid[:, j] & present[:, j]
            targets = torch.where(cut, targets + gamma**k * values[:, j], targets)
        running = running & valid[:, j]
        targets = targets + gamma**k * rewards[:, j] * running.float()
        if k == n - 1:
            alive = running & ~dones[:, j]
            targets = targets + gamma**n * values[:, k + 1 : k + 1 + length] * alive.float()
        running = running & ~dones[:, j]
    return targets, valid[:, :length]


def sequence_td_loss(
    q_network: nn.Module,
    target_network: nn.Module,
    batch: SequenceBatch,
    gamma: float,
    kind: str,
    *,
    n_step: int = 1,
    double: bool = False,
) -> Tensor:
    """Masked mean TD loss over replayed windows for the recurrent network (scalar tensor with grad).

    The first ``batch.burn_in`` steps of each window only warm up both networks' LSTM state from the stored
    ``batch.hidden``; the loss is on the next ``S - burn_in - n_step + 1`` steps, with n-step targets.
    """
    burn = batch.burn_in
    obs = batch.obs[:, burn:]
    length = batch.actions.shape[1] - burn - n_step + 1
    online_start = target_start = None
    if burn > 0:
        if batch.hidden is None:
            raise ValueError("a burn-in batch needs the stored LSTM state (batch.hidden)")
        head_obs, head_present = batch.obs[:, :burn], batch.present[:, :burn]
        online_start = burn_in_state(q_network, head_obs, head_present, batch.hidden)
        target_start = burn_in_state(target_network, head_obs, head_present, batch.hidden)
    q_values = unroll(q_network, obs if double else obs[:, :length], online_start)
    q_taken = q_values[:, :length].gather(2, batch.actions[:, burn : burn + length].unsqueeze(2)).squeeze(2)
    with torch.no_grad():
        values = bootstrap_values(unroll(target_network, obs, target_start), q_values.detach() if double else None)
        if n_step == 1:  # the one-step target written out (bit for bit what runs before n-step existed)
            target = batch.rewards[:, burn:] + gamma * values[:, 1:] * (~batch.dones[:, burn:]).float()
            mask = batch.valid[:, burn:].float()
        else:
            target, valid = n_step_targets(
                batch.rewards[:, burn:], batch.dones[:, burn:], batch.present[:, burn:], batch.valid[:, burn:],
                values, gamma, n_step,
            )  # fmt: skip
            mask = valid.float()
    return (_elementwise(kind, q_taken, target) * mask).sum() / mask.sum().clamp(min=1.0)
