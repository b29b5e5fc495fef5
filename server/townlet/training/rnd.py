"""Hamlet's RND novelty bonus (reference 3.2): `RNDExploration` and its adaptive weight.

Random Network Distillation: a fixed, randomly initialised MLP maps an observation to an embedding and a
second MLP (the predictor) learns to reproduce it. The intrinsic reward of an observation is the per-sample
mean squared error between the two embeddings, high for observations the predictor has seen rarely and
falling as it sees them again. As in Hamlet:

- both MLPs are ``obs -> 256 -> 128 -> embed`` with ReLU between, without normalisation;
- the reward is computed on the pre-step observation;
- the predictor takes one Adam step (lr 1e-4, MSE) each time 128 observations have accumulated, on exactly
  those 128.

The trainer stores the raw error next to the extrinsic reward in replay and adds ``weight * error`` only
when it builds TD targets (Hamlet multiplies by the weight twice, an upstream bug not reproduced here). The
env's reward and the evaluation never see it. `decayed_weight` is Hamlet's `AdaptiveIntrinsicExploration`
rule.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["RNDExploration", "decayed_weight"]

TRAIN_BATCH = 128  # observations per predictor step (Hamlet's fixed batch)


def _mlp(obs_dim: int, embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(obs_dim, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, embed_dim))


class RNDExploration:
    """A fixed random network, its trained predictor and the observations waiting for the next predictor step.

    Both networks are initialised from ``seed`` without touching the global torch RNG, so a run with RND off
    draws exactly the same numbers as before RND existed.
    """

    def __init__(self, obs_dim: int, *, embed_dim: int = 128, learning_rate: float = 1e-4, seed: int = 0) -> None:
        if obs_dim < 1 or embed_dim < 1:
            raise ValueError(f"RND needs obs_dim >= 1 and embed_dim >= 1, got {obs_dim} and {embed_dim}")
        self.obs_dim = int(obs_dim)
        self.embed_dim = int(embed_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.fixed_network = _mlp(self.obs_dim, self.embed_dim)
            self.predictor_network = _mlp(self.obs_dim, self.embed_dim)
        self.fixed_network.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.predictor_network.parameters(), lr=learning_rate)
        self._pending: list[Tensor] = []  # observations since the last predictor step, [k, obs_dim] each
        self.train_steps = 0

    def intrinsic_reward(self, obs: Tensor) -> Tensor:
        """``[B]`` novelty of ``obs [B, obs_dim]``: the mean squared error between the two embeddings."""
        obs = self._check(obs)
        with torch.no_grad():
            error: Tensor = self.predictor_network(obs) - self.fixed_network(obs)
        return error.pow(2).mean(dim=1)

    def observe(self, obs: Tensor) -> list[float]:
        """Queue ``obs [B, obs_dim]`` for the predictor; one Adam step per full batch of 128 queued rows.

        Returns the loss of each step taken (usually none or one).
        """
        self._pending.append(self._check(obs).detach().clone())
        queued = torch.cat(self._pending)
        losses = []
        while queued.shape[0] >= TRAIN_BATCH:
            losses.append(self._train_step(queued[:TRAIN_BATCH]))
            queued = queued[TRAIN_BATCH:]
        self._pending = [queued] if queued.shape[0] else []
        return losses

    def _train_step(self, batch: Tensor) -> float:
        loss = nn.functional.mse_loss(self.predictor_network(batch), self.fixed_network(batch))
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.train_steps += 1
        return float(loss.item())

    def _check(self, obs: Tensor) -> Tensor:
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"RND expects observations [B, {self.obs_dim}], got shape {tuple(obs.shape)}")
        return obs.to(torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """Hamlet's ``rnd_state`` keys, plus ``pending_observations`` so that a resumed run trains the predictor
        on the same batches as an uninterrupted one. A copy: training on does not change it."""
        pending = torch.cat(self._pending) if self._pending else torch.zeros(0, self.obs_dim)
        return copy.deepcopy(
            {
                "fixed_network": self.fixed_network.state_dict(),
                "predictor_network": self.predictor_network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "epsilon": 0.0,  # Hamlet keeps its epsilon here; the trainer writes the run's own
                "epsilon_min": 0.01,
                "epsilon_decay": 0.995,
                "obs_dim": self.obs_dim,
                "embed_dim": self.embed_dim,
                "pending_observations": pending,
                "train_steps": self.train_steps,
            }
        )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved (the dimensions must match this instance's)."""
        if int(state["obs_dim"]) != self.obs_dim or int(state["embed_dim"]) != self.embed_dim:
            raise ValueError(
                f"saved RND state is obs_dim {state['obs_dim']}, embed_dim {state['embed_dim']}; this one is "
                f"{self.obs_dim}, {self.embed_dim}"
            )
        self.fixed_network.load_state_dict(state["fixed_network"])
        self.predictor_network.load_state_dict(state["predictor_network"])
        self.optimizer.load_state_dict(state["optimizer"])
        pending = state.get("pending_observations")
        self._pending = [pending.clone()] if pending is not None and pending.shape[0] else []
        self.train_steps = int(state.get("train_steps", 0))


def decayed_weight(
    weight: float,
    survival_history: Sequence[int],
    *,
    window: int = 100,
    variance_threshold: float = 100.0,
    min_survival: float = 50.0,
    decay: float = 0.99,
) -> float:
    """Hamlet's adaptive intrinsic weight after one agent episode: once the last ``window`` survivals are
    known, multiply by ``decay`` if their variance is below ``variance_threshold`` and their mean above
    ``min_survival`` (the agent has settled on surviving); otherwise keep it."""
    if len(survival_history) < window:
        return weight
    recent = np.asarray(survival_history[-window:], dtype=np.float64)
    if recent.var() < variance_threshold and recent.mean() > min_survival:
        return max(0.0, weight * decay)
    return weight
