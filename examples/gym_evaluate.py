#!/usr/bin/env python3
"""Evaluate the demo models through the Gymnasium interface and the client SDK, against the random valid policy.

    make serve                                                      # terminal 1: the demo models
    python examples/gym_evaluate.py                                 # both demo models, 32 episodes each
    python examples/gym_evaluate.py --model townlet-L2-lstm --episodes 64 --seed 7
    python examples/gym_evaluate.py --checkpoint models/townlet-L2-lstm/model_ep01175.pt   # no server (torch)

`gymnasium.make_vec("Townlet/<level>-v0", ...)` builds the batched simulator; a served model answers every
step through one `HamletClient.episode` stream over all the envs (the server keeps the LSTM state of the
CNN+LSTM model per env and zeroes it where ``reset`` says an episode starts), or, with ``--checkpoint``, a
local `HamletModel` with the state carried here. The model picks greedy actions among those allowed by
``info["action_mask"]``; the random policy draws uniformly from the same masks. Episodes end by death or at
the level's step limit (``terminated`` / ``truncated``); each env's first episode is counted (all start
together: no bias to short ones). Both policies get the same seed, hence the same layouts and start cells.
Rows: the layout the model trained on (from its metadata; none for a model trained on a fresh layout every
episode) and a fresh layout per episode. Needs the client, the simulator and gymnasium
(``pip install ./client './sim[gym]'``); torch only for ``--checkpoint``.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import townlet.env.gym  # noqa: F401  (registers Townlet/L0_0-v0 ... Townlet/L3-v0; numpy only)
from townlet.env import random_valid_actions, training_layout

DEMOS = ("townlet-L1-mlp", "townlet-L2-lstm")
# (obs [N, D], masks bool [N, 6], reset bool [N]: these observations start an episode) -> actions [N]
Policy = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def survival(envs: gym.vector.VectorEnv, policy: Policy, seed: int) -> np.ndarray:
    """Steps survived by each env in its first episode ``[N]``."""
    obs, info = envs.reset(seed=seed)
    steps = np.zeros(envs.num_envs, dtype=np.int64)
    done = np.zeros(envs.num_envs, dtype=bool)
    reset = np.ones(envs.num_envs, dtype=bool)
    while not done.all():
        masks = info["action_mask"].astype(bool)
        masks[~masks.any(axis=1)] = True  # an env being restarted may allow nothing: any action is ignored
        obs, _, terminated, truncated, info = envs.step(policy(obs, masks, reset))
        ended = terminated | truncated
        first = ended & ~done
        steps[first] = info["step_count"][first]
        done |= first
        reset = ended  # NEXT_STEP autoreset: the env's next observation starts a new episode
    return steps


def trained_layout(meta: Mapping[str, Any]) -> dict[str, tuple[int, int]] | None:
    """The layout the model trained on: recorded in a local checkpoint, or redrawn from the ``level`` and
    ``seed`` a server's metadata carries; None for a model trained on a fresh layout per episode."""
    if str(meta.get("relayout", "")).lower() in ("true", "1"):
        return None
    recorded = meta.get("affordance_layout")
    if isinstance(recorded, Mapping):
        return {str(name): (int(pos[0]), int(pos[1])) for name, pos in recorded.items()}
    return training_layout(str(meta["level"]), int(meta["seed"])) if "seed" in meta else None


@contextmanager
def served(client: Any, name: str, num_envs: int) -> Iterator[Policy]:
    """A greedy policy answered by the server: one episode stream over ``num_envs`` envs."""
    with client.episode(name, num_envs=num_envs) as episode:

        def act(obs: np.ndarray, masks: np.ndarray, reset: np.ndarray) -> np.ndarray:
            return np.asarray(episode.step(obs, reset=reset, action_mask=masks, epsilon=0.0).actions)

        yield act


@contextmanager
def local(model: Any) -> Iterator[Policy]:
    """A greedy policy of a local `HamletModel`, its recurrent state (if any) carried between steps."""
    state: dict[str, Any] = {"hidden": None}

    def act(obs: np.ndarray, masks: np.ndarray, reset: np.ndarray) -> np.ndarray:
        result = model.predict(obs, state["hidden"], action_mask=masks, episode_start=reset)
        state["hidden"] = result.hidden
        return np.asarray(result.actions)

    yield act


def uniform_valid(seed: int) -> Policy:
    sampler = np.random.default_rng(seed)
    return lambda obs, masks, reset: random_valid_actions(masks, sampler)  # the one random policy (townlet.env)


def evaluate(
    meta: Mapping[str, Any], open_policy: Callable[[int], Any], episodes: int, seed: int
) -> list[tuple[str, str, np.ndarray]]:
    """``(layout, policy, steps [episodes])`` rows for a model whose metadata is ``meta``; ``open_policy(n)``
    opens its policy over ``n`` envs (a context manager)."""
    env_id = f"Townlet/{meta['level']}-v0"
    layouts: dict[str, dict[str, Any]] = {"fresh layout per episode": {"relayout_each_reset": True}}
    layout = trained_layout(meta)
    if layout is not None:
        layouts = {"trained layout": {"layout": layout}, **layouts}
    rows = []
    for name, kwargs in layouts.items():
        for label in ("model", "random"):
            envs = gym.make_vec(env_id, num_envs=episodes, vectorization_mode="vector_entry_point", **kwargs)
            if label == "model":
                with open_policy(episodes) as policy:
                    steps = survival(envs, policy, seed)
            else:
                steps = survival(envs, uniform_valid(seed), seed)
            envs.close()
            rows.append((name, label, steps))
    return rows


def print_rows(title: str, rows: list[tuple[str, str, np.ndarray]]) -> None:
    print(title)
    print(f"  {'layout':<26} {'policy':<7} {'mean':>7} {'std':>6} {'median':>7}")
    for name, label, steps in rows:
        print(f"  {name:<26} {label:<7} {steps.mean():7.1f} {steps.std():6.1f} {np.median(steps):7.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="localhost:50051", help="the server (default: make serve's)")
    parser.add_argument("--model", nargs="+", default=list(DEMOS), help="served model names (default: both demos)")
    parser.add_argument("--checkpoint", type=Path, help="play this local checkpoint instead of a server (needs torch)")
    parser.add_argument("--episodes", type=int, default=32, help="one per env, all stepped together")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    header = f"{args.episodes} episodes, seed {args.seed} (survival steps)"
    if args.checkpoint is not None:
        from townlet.inference import HamletModel  # torch: only here

        model = HamletModel.load(args.checkpoint)
        rows = evaluate(model.metadata, lambda n: local(model), args.episodes, args.seed)
        print_rows(f"{args.checkpoint} (local) on Townlet/{model.metadata['level']}-v0, {header}", rows)
        return
    from hamlet_client import HamletClient

    with HamletClient(args.target) as client:
        for name in args.model:
            meta = {**client.metadata(name).extra}
            rows = evaluate(meta, functools.partial(served, client, name), args.episodes, args.seed)
            print_rows(f"{name} served by {args.target} on Townlet/{meta['level']}-v0, {header}", rows)


if __name__ == "__main__":
    main()
