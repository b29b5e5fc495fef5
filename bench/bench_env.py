"""Throughput of the numpy Townlet simulator (townlet.env) under a uniform random valid policy.

Each timed loop is what a rollout worker does per step: action masks, random valid actions, step, and
reset of the envs that finished. Prints the median of several repeats, next to the upstream torch
simulator's figures (reference section 7: 2-core CPU, 1 torch thread, contended machine).

    .venv/bin/python bench/bench_env.py [--levels L1 L2] [--sizes 1 64 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from townlet.env import VectorTownletEnv, random_valid_actions

# (level, N) -> upstream figure as (batched steps/s, agent-steps/s), where the reference gives one.
UPSTREAM = {
    ("L1", 1): "~1.8k steps/s",
    ("L1", 64): "~63k agent-steps/s",
    ("L2", 1): "~0.8k steps/s",
    ("L2", 64): "~1.3k agent-steps/s",
}


def _steps_per_second(level: str, num_envs: int, steps: int, seed: int) -> float:
    env = VectorTownletEnv(level, num_envs, seed=seed)
    rng = np.random.default_rng(seed)
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        _, _, done, info = env.step(random_valid_actions(env.action_masks(), rng))
        finished = done | info["truncated"]
        if finished.any():
            env.reset_envs(finished)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", nargs="+", default=["L1", "L2"], help="levels to time")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 64, 1024], help="batch sizes N")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median reported)")
    parser.add_argument("--seconds", type=float, default=0.5, help="rough length of one repeat")
    args = parser.parse_args()

    print(f"townlet.env random-valid-policy throughput, median of {args.repeats} repeats (numpy {np.__version__})")
    header = f"{'level':<6}{'N':>6}{'batched steps/s':>18}{'agent-steps/s':>16}   upstream (torch, ref. s.7)"
    print(header)
    print("-" * len(header))
    for level in args.levels:
        for n in args.sizes:
            probe = _steps_per_second(level, n, 20, seed=0)  # warm-up and step-count calibration
            steps = max(20, int(probe * args.seconds))
            rates = [_steps_per_second(level, n, steps, seed=r) for r in range(args.repeats)]
            batched = statistics.median(rates)
            print(f"{level:<6}{n:>6}{batched:>18,.0f}{batched * n:>16,.0f}   {UPSTREAM.get((level, n), '-')}")


if __name__ == "__main__":
    main()
