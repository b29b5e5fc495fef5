#!/usr/bin/env python3
"""Roll out a served Townlet agent in the reference simulator: env here, actions from Hamlet Serve.

    hamlet-server serve --models models &                  # serves models/townlet-L1-mlp, townlet-L2-lstm, ...
    python examples/remote_rollout.py --model townlet-L2-lstm --episodes 64 --seed 7

The simulator (`townlet.env`, numpy only) steps ``--episodes`` environments in lock step; one
`StreamEpisode` carries all of them, the server keeps each one's LSTM state (zeroed on the first step),
and the action masks go with every step so the server's greedy pick is over valid actions. No torch is
imported here. The level and the training layout come from the model's metadata (``level`` and ``seed``,
written by ``hamlet-train``); ``--level`` / ``--layout seed`` override them for other models.

Prints the survival steps of the served model and, on the same episodes, of the random valid policy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from hamlet_client import HamletClient, HamletError
from townlet.env import Action, VectorTownletEnv, random_valid_actions
from townlet.training.config import training_layout

Layout = dict[str, tuple[int, int]] | None


def rollout(client: HamletClient, model: str, level: str, layout: Layout, episodes: int, seed: int) -> np.ndarray:
    """Survival steps of ``episodes`` episodes played by the served ``model`` (greedy, masked)."""
    env = VectorTownletEnv(level, episodes, layout=layout, seed=seed)
    obs = env.reset(seed=seed)
    finished = np.zeros(episodes, dtype=bool)
    with client.episode(model, num_envs=episodes, epsilon=0.0) as stream:
        if stream.obs_dim != env.obs_dim:
            raise SystemExit(f"model {model} reads {stream.obs_dim} features; level {level} gives {env.obs_dim}")
        first = True
        while not finished.all():
            masks = env.action_masks()
            masks[finished, Action.WAIT] = True  # finished envs ignore their action; keep every row valid
            step = stream.step(obs, reset=first, action_mask=masks)
            obs, _, done, info = env.step(step.actions)
            finished = done | info["truncated"]
            first = False
    steps: np.ndarray = info["step_counts"].astype(np.int64)
    return steps


def random_rollout(level: str, layout: Layout, episodes: int, seed: int) -> np.ndarray:
    """The same episodes (same layout and start cells) played by the uniform random valid policy."""
    env = VectorTownletEnv(level, episodes, layout=layout, seed=seed)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    finished = np.zeros(episodes, dtype=bool)
    while not finished.all():
        _, _, done, info = env.step(random_valid_actions(env.action_masks(), rng))
        finished = done | info["truncated"]
    steps: np.ndarray = info["step_counts"].astype(np.int64)
    return steps


def describe(name: str, steps: np.ndarray) -> str:
    return (
        f"{name:<8} mean {steps.mean():6.1f} ± {steps.std():5.1f}  median {np.median(steps):6.1f}  "
        f"min {steps.min():4d}  max {steps.max():4d}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--target", default="localhost:50051", help="server host:port (default: localhost:50051)")
    parser.add_argument("--model", required=True, help="model name on the server, e.g. townlet-L1-mlp")
    parser.add_argument("--level", help="level to simulate (default: the model's metadata 'level')")
    parser.add_argument("--layout", choices=("trained", "seed"), default="trained", help="affordance layout")
    parser.add_argument("--episodes", type=int, default=32, help="environments stepped together (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the start cells and the random baseline")
    args = parser.parse_args(argv)

    try:
        with HamletClient(args.target, timeout=30.0) as client:
            meta = client.metadata(args.model)
            level = args.level or meta.extra.get("level")
            if not level:
                raise SystemExit("the model's metadata names no level; pass --level L1 (or L2, ...)")
            layout = None
            if args.layout == "trained" and "seed" in meta.extra and meta.extra.get("relayout") != "true":
                layout = training_layout(level, int(meta.extra["seed"]))
            served = rollout(client, args.model, level, layout, args.episodes, args.seed)
    except HamletError as exc:
        print(f"remote_rollout: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    baseline = random_rollout(level, layout, args.episodes, args.seed)
    where = "trained layout" if layout is not None else f"layout from seed {args.seed}"
    print(f"{args.model} v{meta.version} on {level}, {args.episodes} episodes, {where} (survival steps):")
    print(describe("served", served))
    print(describe("random", baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
