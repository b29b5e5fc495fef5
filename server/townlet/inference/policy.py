"""Masked epsilon-greedy action selection, as a pure function of Q-values and random draws.

This matches Hamlet's training and live server: the greedy pick is the argmax over *valid* actions, and an
exploring sample picks uniformly among its valid actions. Exploration is decided per sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["epsilon_greedy"]


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
