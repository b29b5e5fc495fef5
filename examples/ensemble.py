#!/usr/bin/env python3
"""An ensemble of Hamlet agents: average the members' Q-values, then act epsilon-greedily on the average.

Each recurrent member keeps its own LSTM state, so the ensemble's state is a list of ``(h, c)`` pairs that
the caller passes in and gets back, exactly like a single model's. Members must share the observation and
action spaces: an L1 model (obs 91) and an L2 model (obs 54) cannot vote together.

    python examples/ensemble.py --checkpoints a.pt b.pt c.pt --steps 100   # e.g. runs of several seeds
    python examples/ensemble.py                 # three seeded, UNTRAINED L2 networks written to a temp dir

models/ ships one trained model per level, and an ensemble needs several of one level, so without
--checkpoints the members are untrained stand-ins (train more with `hamlet-train --seed N`).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from townlet.agent.networks import RecurrentSpatialQNetwork
from townlet.inference import HamletModel, epsilon_greedy

NumpyHidden = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class EnsembleResult:
    actions: npt.NDArray[np.int64]
    """``[B]`` actions chosen on the averaged Q-values."""
    q_values: npt.NDArray[np.float32]
    """``[B, A]`` mean of the members' Q-values."""
    member_q_values: npt.NDArray[np.float32]
    """``[K, B, A]`` each member's Q-values."""
    hidden: list[NumpyHidden | None]
    """One ``(h, c)`` per member (None for MLP members)."""


class QEnsemble:
    """Several models with the same observation and action spaces, voting by mean Q-value (numpy in and out)."""

    def __init__(self, models: Sequence[HamletModel]) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        shapes = {(m.obs_dim, m.action_dim) for m in models}
        if len(shapes) != 1:
            raise ValueError(f"members disagree on (obs_dim, action_dim): {sorted(shapes)}")
        self.models = list(models)

    def predict(
        self,
        obs: npt.NDArray[np.float32],
        hidden: list[NumpyHidden | None] | None = None,
        epsilon: float = 0.0,
        action_mask: npt.NDArray[np.bool_] | None = None,
        generator: torch.Generator | None = None,
    ) -> EnsembleResult:
        hidden = hidden or [None] * len(self.models)
        results = [m.predict(obs, h, action_mask=action_mask) for m, h in zip(self.models, hidden, strict=True)]
        member_q = np.stack([r.q_values for r in results])
        mean_q = member_q.mean(axis=0)
        mask = None if action_mask is None else torch.as_tensor(action_mask).reshape(mean_q.shape)
        actions = epsilon_greedy(torch.from_numpy(mean_q), epsilon, mask, generator).numpy()
        return EnsembleResult(actions, mean_q, member_q, [r.hidden for r in results])


def check_members(paths: Sequence[Path], models: Sequence[HamletModel]) -> str | None:
    """None when every member reads the same observations and picks from the same actions, else why not."""
    spaces = [(m.obs_dim, m.action_dim) for m in models]
    if len(set(spaces)) <= 1:
        return None
    listing = "; ".join(f"{p} (obs {o}, {a} actions)" for p, (o, a) in zip(paths, spaces, strict=True))
    return f"members must share obs_dim and action_dim (models of one level), got: {listing}"


def demo_checkpoints(folder: Path, count: int) -> list[Path]:
    """``count`` UNTRAINED recurrent networks with different seeds (stand-ins for independently trained runs)."""
    paths = []
    for seed in range(count):
        torch.manual_seed(seed)
        paths.append(HamletModel(RecurrentSpatialQNetwork()).save(folder / f"member_{seed}.pt"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, nargs="+", help="member checkpoints, all of one level")
    parser.add_argument("--members", type=int, default=3, help="number of untrained members (without --checkpoints)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        paths = args.checkpoints or demo_checkpoints(Path(scratch), args.members)
        models = [HamletModel.load(p) for p in paths]
    problem = check_members(paths, models)
    if problem:
        parser.error(problem)
    ensemble = QEnsemble(models)
    print(f"ensemble of {len(ensemble.models)} models, obs {ensemble.models[0].obs_dim}")

    rng = np.random.default_rng(args.seed)
    hidden: list[NumpyHidden | None] | None = None
    agree = np.zeros(len(ensemble.models))
    for _ in range(args.steps):
        obs = rng.random((args.batch, ensemble.models[0].obs_dim), dtype=np.float32)
        result = ensemble.predict(obs, hidden)
        hidden = result.hidden  # each member's own LSTM state, fed back next step
        if not np.allclose(result.q_values, result.member_q_values.mean(axis=0)):
            raise SystemExit("ensemble: FAILED (mean of members)")
        member_actions = result.member_q_values.argmax(axis=2)  # [K, B]
        agree += (member_actions == result.actions).mean(axis=1)
    for k, rate in enumerate(agree / args.steps):
        print(f"member {k} agrees with the ensemble on {rate:.0%} of actions")
    print(f"ensemble: OK ({args.steps} steps x batch {args.batch})")


if __name__ == "__main__":
    main()
