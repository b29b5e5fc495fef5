"""A remote simulator: vectorised environments stepped here, actions chosen by a Hamlet Serve server.

    make serve                                     # or: hamlet-server serve --models runs/models
    python examples/remote_simulator.py --target localhost:50051 --model <name> --envs 8 --steps 500

Needs only the client SDK (`pip install ./client`: grpcio, protobuf, numpy; no torch). The world is a
small stand-in written in numpy: each agent walks a grid toward a goal while meters decay; its
observation has the width the model expects (read from the server's metadata), so any hosted model can
drive it. One `StreamEpisode` carries all environments in lock step; the server keeps every
environment's LSTM state and zeroes it when we flag a reset.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

import numpy as np

from hamlet_client import HamletClient, HamletError

# Townlet's action layout: up, down, left, right, interact, wait.
MOVES = np.array([[0, -1], [0, 1], [-1, 0], [1, 0], [0, 0], [0, 0]], dtype=np.int64)


@dataclass
class StandInWorld:
    """``num_envs`` grid worlds in numpy arrays. Pure shape stand-in for the Townlet simulator."""

    num_envs: int
    obs_dim: int
    grid: int = 8
    max_steps: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.pos = np.zeros((self.num_envs, 2), dtype=np.int64)
        self.goal = np.zeros((self.num_envs, 2), dtype=np.int64)
        self.energy = np.ones(self.num_envs, dtype=np.float32)
        self.t = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, which: np.ndarray | None = None) -> np.ndarray:
        """Reset the environments where ``which`` is True (all when None); returns observations."""
        idx = np.arange(self.num_envs) if which is None else np.flatnonzero(which)
        self.pos[idx] = self.rng.integers(0, self.grid, (len(idx), 2))
        self.goal[idx] = self.rng.integers(0, self.grid, (len(idx), 2))
        self.energy[idx] = 1.0
        self.t[idx] = 0
        return self.observe()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply one action per environment -> (observations, rewards, dones)."""
        self.pos = np.clip(self.pos + MOVES[actions], 0, self.grid - 1)
        self.energy -= 0.01
        self.t += 1
        at_goal = (self.pos == self.goal).all(axis=1) & (actions == 4)
        rewards = np.where(at_goal, 1.0, -0.01).astype(np.float32)
        dones = at_goal | (self.energy <= 0) | (self.t >= self.max_steps)
        return self.observe(), rewards, dones

    def observe(self) -> np.ndarray:
        """``[num_envs, obs_dim]`` float32: one-hot position, goal offset, energy, time; zero-padded."""
        obs = np.zeros((self.num_envs, self.obs_dim), dtype=np.float32)
        cells = self.pos[:, 1] * self.grid + self.pos[:, 0]
        width = min(self.grid * self.grid, self.obs_dim)
        inside = cells < width
        obs[np.flatnonzero(inside), cells[inside]] = 1.0
        extra = np.column_stack([(self.goal - self.pos) / self.grid, self.energy, self.t / self.max_steps])
        k = min(extra.shape[1], max(self.obs_dim - width, 0))
        obs[:, width : width + k] = extra[:, :k]
        return obs


def run(target: str, model: str | None, num_envs: int, steps: int, epsilon: float, seed: int) -> int:
    with HamletClient(target) as client:
        meta = client.metadata(model)
        print(f"{meta.name} v{meta.version}: {meta.network_type}, obs_dim={meta.obs_dim}, actions={meta.action_dim}")
        world = StandInWorld(num_envs, meta.obs_dim, seed=seed)
        obs = world.reset()
        reset = np.ones(num_envs, dtype=bool)
        returns = np.zeros(num_envs, dtype=np.float32)
        finished: list[float] = []
        t0 = time.perf_counter()
        with client.episode(meta.name, num_envs=num_envs, epsilon=epsilon, seed=seed, version=meta.version) as ep:
            for _ in range(steps):
                step = ep.step(obs, reset=reset)
                obs, rewards, dones = world.step(step.actions % len(MOVES))
                returns += rewards
                finished += returns[dones].tolist()
                returns[dones] = 0.0
                if dones.any():
                    obs = world.reset(dones)
                reset = dones
        elapsed = time.perf_counter() - t0
    mean = f"{np.mean(finished):.3f}" if finished else "n/a"
    rate = f"{steps / elapsed:.0f} steps/s, {steps * num_envs / elapsed:.0f} env-steps/s"
    print(f"{steps} lock-step steps x {num_envs} envs in {elapsed:.2f} s ({rate}); {len(finished)} episodes ended, "
          f"mean return {mean}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="localhost:50051", help="server address host:port")
    parser.add_argument("--model", default=None, help="model name (default: the server's default model)")
    parser.add_argument("--envs", type=int, default=8, help="environments driven by the one stream")
    parser.add_argument("--steps", type=int, default=500, help="lock-step steps to run")
    parser.add_argument("--epsilon", type=float, default=0.05, help="exploration rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and of the server's draws")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return run(args.target, args.model, args.envs, args.steps, args.epsilon, args.seed)
    except HamletError as exc:
        print(f"remote_simulator: {type(exc).__name__} ({exc.code.name if exc.code else '-'}): {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
