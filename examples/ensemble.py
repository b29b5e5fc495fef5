#!/usr/bin/env python3
"""An ensemble of Hamlet agents: average the members' Q-values, then act epsilon-greedily on the average.

Each recurrent member keeps its own LSTM state, so the ensemble's state is a list of ``(h, c)`` pairs that
the caller passes in and gets back, exactly like a single model's.

    python examples/ensemble.py                                  # three seeded demo models in a temp dir
    python examples/ensemble.py --checkpoints a.pt b.pt c.pt --steps 100
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from townlet.agent.networks import Hidden, RecurrentSpatialQNetwork
from townlet.inference import HamletModel, epsilon_greedy


@dataclass(frozen=True)
class EnsembleResult:
    actions: Tensor
    """``[B]`` int64 actions chosen on the averaged Q-values."""
    q_values: Tensor
    """``[B, A]`` mean of the members' Q-values."""
    member_q_values: Tensor
    """``[K, B, A]`` each member's Q-values."""
    hidden: list[Hidden | None]
    """One ``(h, c)`` per member (None for MLP members)."""


class QEnsemble:
    """Several models with the same observation and action spaces, voting by mean Q-value."""

    def __init__(self, models: Sequence[HamletModel]) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        shapes = {(m.obs_dim, m.action_dim) for m in models}
        if len(shapes) != 1:
            raise ValueError(f"members disagree on (obs_dim, action_dim): {sorted(shapes)}")
        self.models = list(models)

    def predict(
        self,
        obs: np.ndarray,
        hidden: list[Hidden | None] | None = None,
        epsilon: float = 0.0,
        action_mask: np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> EnsembleResult:
        hidden = hidden or [None] * len(self.models)
        results = [m.predict(obs, h, action_mask=action_mask) for m, h in zip(self.models, hidden, strict=True)]
        member_q = torch.stack([r.q_values for r in results])
        mean_q = member_q.mean(dim=0)
        mask = None if action_mask is None else torch.as_tensor(action_mask).reshape(mean_q.shape)
        actions = epsilon_greedy(mean_q, epsilon, mask, generator)
        return EnsembleResult(actions, mean_q, member_q, [r.hidden for r in results])


def demo_checkpoints(folder: Path, count: int) -> list[Path]:
    """``count`` untrained recurrent networks with different seeds (stand-ins for independently trained runs)."""
    paths = []
    for seed in range(count):
        torch.manual_seed(seed)
        paths.append(HamletModel(RecurrentSpatialQNetwork()).save(folder / f"member_{seed}.pt"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, nargs="+", help="member checkpoints; default: 3 demo models")
    parser.add_argument("--members", type=int, default=3, help="number of demo members (without --checkpoints)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        paths = args.checkpoints or demo_checkpoints(Path(scratch), args.members)
        ensemble = QEnsemble([HamletModel.load(p) for p in paths])
    print(f"ensemble of {len(ensemble.models)} models, obs {ensemble.models[0].obs_dim}")

    rng = np.random.default_rng(args.seed)
    hidden: list[Hidden | None] | None = None
    agree = np.zeros(len(ensemble.models))
    for _ in range(args.steps):
        obs = rng.random((args.batch, ensemble.models[0].obs_dim), dtype=np.float32)
        result = ensemble.predict(obs, hidden)
        hidden = result.hidden  # each member's own LSTM state, fed back next step
        if not torch.allclose(result.q_values, result.member_q_values.mean(dim=0)):
            raise SystemExit("ensemble: FAILED (mean of members)")
        member_actions = result.member_q_values.argmax(dim=2)  # [K, B]
        agree += (member_actions == result.actions).float().mean(dim=1).numpy()
    for k, rate in enumerate(agree / args.steps):
        print(f"member {k} agrees with the ensemble on {rate:.0%} of actions")
    print(f"ensemble: OK ({args.steps} steps x batch {args.batch})")


if __name__ == "__main__":
    main()
