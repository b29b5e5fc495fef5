#!/usr/bin/env python3
"""Evaluate a trained Townlet model through the Gymnasium interface, against the random valid policy.

    python examples/gym_evaluate.py                                   # the L1 demo model, 32 episodes
    python examples/gym_evaluate.py --model models/townlet-L1-mlp/model_ep00300.pt --episodes 64 --seed 7

`gymnasium.make_vec("Townlet/L1-v0", ...)` builds the batched simulator; the model picks greedy actions
among those allowed by ``info["action_mask"]`` and the random policy draws uniformly from the same
masks. Episodes end by death or at the level's 500-step limit (``terminated`` / ``truncated``); the
vector env restarts an env on the step after (Gymnasium's NEXT_STEP autoreset), and each env's first
episode is counted. Both policies get the same seed, hence the same layouts and start cells. Prints
survival steps on the layout the model trained on (from its metadata) and on a fresh layout per episode.
Feed-forward models only (an LSTM model would also need its hidden state carried and zeroed at each restart).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

import townlet.env.gym  # noqa: F401  (registers Townlet/L0_0-v0 ... Townlet/L3-v0)
from townlet.env import random_valid_actions
from townlet.inference import HamletModel

DEMO = Path(__file__).resolve().parents[1] / "models" / "townlet-L1-mlp" / "model_ep00300.pt"
Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (obs [N, D], masks int8 [N, 6]) -> actions [N]


def survival(envs: gym.vector.VectorEnv, policy: Policy, seed: int) -> np.ndarray:
    """Steps survived by each env in its first episode (all envs start together: no bias to short ones)."""
    obs, info = envs.reset(seed=seed)
    steps = np.zeros(envs.num_envs, dtype=np.int64)
    done = np.zeros(envs.num_envs, dtype=bool)
    while not done.all():
        obs, _, terminated, truncated, info = envs.step(policy(obs, info["action_mask"]))
        first = (terminated | truncated) & ~done
        steps[first] = info["step_count"][first]
        done |= first
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO, help="inference or training checkpoint (MLP)")
    parser.add_argument("--episodes", type=int, default=32, help="one per env, all stepped together")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    model = HamletModel.load(args.model)
    meta = model.metadata
    if meta["network_type"] != "simple":
        raise SystemExit(f"{args.model} is a {meta['network_type']} model; this example plays feed-forward ones")
    level = meta.get("level", "L1")
    trained_layout = meta.get("affordance_layout")
    env_id = f"Townlet/{level}-v0"

    def greedy(obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        actions: np.ndarray = model.predict(obs, action_mask=masks.astype(bool)).actions
        return actions

    sampler = np.random.default_rng(args.seed)

    def uniform_valid(obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return random_valid_actions(masks.astype(bool), sampler)  # the one random policy (townlet.env)

    layouts = {"trained layout": {"layout": trained_layout}, "fresh layout per episode": {"relayout_each_reset": True}}
    print(f"{args.model} on {env_id}, {args.episodes} episodes, seed {args.seed} (survival steps, max 500)")
    print(f"{'layout':<26} {'policy':<7} {'mean':>7} {'std':>6} {'median':>7}")
    for name, kwargs in layouts.items():
        if name == "trained layout" and trained_layout is None:
            continue
        for label, policy in (("model", greedy), ("random", uniform_valid)):
            envs = gym.make_vec(env_id, num_envs=args.episodes, vectorization_mode="vector_entry_point", **kwargs)
            steps = survival(envs, policy, args.seed)
            envs.close()
            print(f"{name:<26} {label:<7} {steps.mean():7.1f} {steps.std():6.1f} {np.median(steps):7.1f}")


if __name__ == "__main__":
    main()
