"""How a Hamlet agent acts, as pure functions: masked epsilon-greedy choice and episode-start LSTM resets.

`epsilon_greedy` matches Hamlet's training and live server: the greedy pick is the argmax over *valid*
actions, and an exploring sample picks uniformly among its valid actions. Exploration is decided per sample.

`reset_hidden` zeroes the LSTM state of the rows whose episode starts, as Hamlet's trainer does on a death
(`HamletModel.predict`'s ``episode_start``). The server's session table still zeroes its rows in place
(``hamlet_server.sessions``); it can call this function instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from townlet.agent.networks import Hidden

__all__ = ["epsilon_greedy", "reset_hidden"]


def epsilon_greedy(
    q_values: Tensor,
    epsilon: float | Tensor = 0.0,
    action_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one action per row of ``q_values [B, A]``; returns ``[B]`` int64 on the same device.

    ``epsilon`` is a float or a ``[B]`` tensor of per-sample rates in [0, 1]; ``action_mask [B, A]`` bool
    (True = allowed, every row with at least one True) restricts both greedy and random picks.
    ``generator`` (on ``q_values.device``) makes the random draws reproducible. Inputs are trusted here;
    `HamletModel.predict` validates them. With a scalar epsilon of 0 no random numbers are drawn.
    """
    masked_q = q_values if action_mask is None else q_values.masked_fill(~action_mask, float("-inf"))
    greedy = masked_q.argmax(dim=1)
    if not isinstance(epsilon, Tensor) and epsilon <= 0.0:
        return greedy
    batch, num_actions = q_values.shape
    device = q_values.device
    explore = torch.rand(batch, generator=generator, device=device) < epsilon
    # A uniform choice among the valid actions: the argmax of independent uniform scores over them.
    scores = torch.rand(batch, num_actions, generator=generator, device=device)
    if action_mask is not None:
        scores = scores.masked_fill(~action_mask, -1.0)
    return torch.where(explore, scores.argmax(dim=1), greedy)


def reset_hidden(hidden: Hidden, episode_start: Tensor) -> Hidden:
    """Zero the rows of ``hidden = (h, c)``, each ``[1, B, H]``, where ``episode_start [B]`` bool is True.

    Returns new tensors; the inputs are not changed. Rows set to zero are exactly what ``hidden=None`` gives a
    new episode, so a batch of environments can restart some rows and carry the others. Inputs are trusted
    here (same device, matching B); `HamletModel.predict` validates them.
    """
    h, c = hidden
    starts = episode_start.reshape(1, -1, 1)
    return h.masked_fill(starts, 0.0), c.masked_fill(starts, 0.0)
