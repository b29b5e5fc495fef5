#!/usr/bin/env python3
"""Roll out a served Townlet agent in the reference simulator: env here, actions from Hamlet Serve.

    hamlet-server serve --models models &                  # serves models/townlet-L1-mlp, townlet-L2-lstm, ...
    python examples/remote_rollout.py --model townlet-L2-lstm --envs 32 --episodes 64 --seed 7
    python examples/remote_rollout.py --model townlet-L2-lstm --envs 32 --episodes 64 --streams

The simulator (`townlet.env`, numpy only) steps ``--envs`` environments in lock step and restarts each one
as soon as it dies, until ``--episodes`` episodes have finished. One `StreamEpisode` carries all of them
(or, with ``--streams``, one stream per environment); the server keeps each environment's LSTM state and
zeroes it when the step's reset mask says the environment restarted; the action masks go with every step
so the server's greedy pick is over valid actions. No torch is imported here: ``pip install ./client ./sim``
(the client SDK and the numpy-only simulator) is all it needs. The level and the training layout come from
the model's metadata (``level`` and ``seed``, written by ``hamlet-train``); ``--level`` / ``--layout seed``
override them for other models.

Prints the survival steps and env steps per second of the served model and, on the same kind of rollout,
of the random valid policy. (`rollout` plays one round of episodes, all started together.)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hamlet_client import Episode, HamletClient, HamletError
from townlet.env import Action, VectorTownletEnv, random_valid_actions, training_layout

Layout = dict[str, tuple[int, int]] | None
Choose = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (obs, masks, reset) -> actions
Result = tuple[np.ndarray, int, float]  # survival steps, env steps, seconds


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


def run_until(env: VectorTownletEnv, episodes: int, seed: int, choose: Choose) -> tuple[np.ndarray, int]:
    """Step every env, restarting each one as soon as it dies or hits the step limit, until ``episodes``
    episodes have finished; ``choose(obs, masks, reset)`` picks the actions. Returns (survival steps of the
    finished episodes, env steps taken). Episodes still running at the end are not counted."""
    obs = env.reset(seed=seed)
    reset = np.ones(env.num_envs, dtype=bool)  # every env starts fresh: zero LSTM state on the server
    survival: list[int] = []
    env_steps = 0
    while len(survival) < episodes:
        actions = choose(obs, env.action_masks(), reset)
        obs, _, done, info = env.step(actions)
        env_steps += env.num_envs
        reset = done | info["truncated"]
        if reset.any():
            survival.extend(int(s) for s in info["step_counts"][reset])
            obs = env.reset_envs(reset)
    return np.asarray(survival[:episodes], dtype=np.int64), env_steps


def served_policy(stream: Episode) -> Choose:
    """Actions from the server: one StreamEpisode step per batched env step, masks and resets included."""
    return lambda obs, masks, reset: stream.step(obs, reset=reset, action_mask=masks).actions


def continuous(client: HamletClient, model: str, level: str, layout: Layout, args: argparse.Namespace) -> Result:
    """``--envs`` environments in this process, restarted as they die, on one stream (``num_envs = N``) or,
    with ``--streams``, on one stream each (threads sharing the client)."""
    start = time.perf_counter()
    if not args.streams:
        env = VectorTownletEnv(level, args.envs, layout=layout, seed=args.seed)
        with client.episode(model, num_envs=args.envs) as stream:
            survival, steps = run_until(env, args.episodes, args.seed, served_policy(stream))
        return survival, steps, time.perf_counter() - start

    per_stream = -(-args.episodes // args.envs)

    def one(index: int) -> tuple[np.ndarray, int]:
        env = VectorTownletEnv(level, 1, layout=layout, seed=args.seed + index)
        with client.episode(model, num_envs=1) as stream:
            return run_until(env, per_stream, args.seed + index, served_policy(stream))

    with ThreadPoolExecutor(args.envs) as pool:
        parts = list(pool.map(one, range(args.envs)))
    survival = np.concatenate([p[0] for p in parts])[: args.episodes]
    return survival, sum(p[1] for p in parts), time.perf_counter() - start


def random_continuous(level: str, layout: Layout, args: argparse.Namespace) -> Result:
    """The uniform random valid policy on the same kind of rollout, in this process."""
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    env = VectorTownletEnv(level, args.envs, layout=layout, seed=args.seed)
    survival, steps = run_until(
        env, args.episodes, args.seed, lambda obs, masks, reset: random_valid_actions(masks, rng)
    )
    return survival, steps, time.perf_counter() - start


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
    parser.add_argument("--envs", type=int, default=32, help="environments simulated in this process (default: 32)")
    parser.add_argument("--episodes", type=int, default=64, help="finished episodes to collect (default: 64)")
    parser.add_argument("--streams", action="store_true", help="one stream per environment instead of one for all")
    parser.add_argument("--seed", type=int, default=0, help="seeds the start cells and the random baseline")
    args = parser.parse_args(argv)
    if args.envs < 1 or args.episodes < 1:
        parser.error("--envs and --episodes must be at least 1")

    try:
        with HamletClient(args.target, timeout=30.0) as client:
            meta = client.metadata(args.model)
            level = args.level or meta.extra.get("level")
            if not level:
                raise SystemExit("the model's metadata names no level; pass --level L1 (or L2, ...)")
            layout = None
            if args.layout == "trained" and "seed" in meta.extra and meta.extra.get("relayout") != "true":
                layout = training_layout(level, int(meta.extra["seed"]))
            served, served_steps, served_s = continuous(client, args.model, level, layout, args)
    except HamletError as exc:
        print(f"remote_rollout: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    baseline, random_steps, random_s = random_continuous(level, layout, args)
    where = "trained layout" if layout is not None else f"layout from seed {args.seed}"
    how = f"{args.envs} streams of 1 env" if args.streams else f"1 stream of {args.envs} envs"
    print(f"{args.model} v{meta.version} on {level}, {args.episodes} episodes, {where}, {how} (survival steps):")
    print(describe("served", served) + f"  | {served_steps / served_s:8.0f} env steps/s")
    print(describe("random", baseline) + f"  | {random_steps / random_s:8.0f} env steps/s (local, no model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
