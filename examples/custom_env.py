#!/usr/bin/env python3
"""Drive a trained Hamlet agent in an environment of your own.

The model only needs observations in the layout it was trained on. Hamlet's recurrent (L2) network reads a
flat float vector of 54: a 5x5 local window (25), the agent's normalised position (2), 8 meters, a one-hot of
the affordance underfoot (15 = 14 types + "none") and 4 temporal extras (ignored by the network). Here a tiny
foraging world fills that layout: the window marks food, meter 0 is energy, and actions are Hamlet's six
(0 up, 1 down, 2 left, 3 right, 4 interact, 5 wait) with an action mask like Hamlet's.

    python examples/custom_env.py                      # the trained L2 demo model in models/
    python examples/custom_env.py --checkpoint model_ep10000.pt --episodes 5 --epsilon 0.05

The demo model learned Townlet, not this world: it reads the layout, its choices are Townlet habits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from townlet.inference import HamletModel

DEMO_L2 = Path(__file__).resolve().parent.parent / "models" / "townlet-L2-lstm" / "model_ep01175.pt"
UP, DOWN, LEFT, RIGHT, INTERACT, WAIT = range(6)
MOVES = {UP: (-1, 0), DOWN: (1, 0), LEFT: (0, -1), RIGHT: (0, 1)}


class ForagingWorld:
    """A grid with food; eating restores energy, every step costs some. Observations use Hamlet's L2 layout."""

    def __init__(self, size: int = 8, food: int = 6, seed: int = 0) -> None:
        self.size, self.num_food = size, food
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> np.ndarray:
        cells = self.rng.choice(self.size * self.size, self.num_food + 1, replace=False)
        self.agent = np.array(divmod(int(cells[0]), self.size))
        self.food = {divmod(int(c), self.size) for c in cells[1:]}
        self.energy = 1.0
        self.steps = 0
        return self.observation()

    def observation(self) -> np.ndarray:
        window = np.zeros((5, 5), np.float32)
        for dr in range(-2, 3):
            for dc in range(-2, 3):
                if (int(self.agent[0]) + dr, int(self.agent[1]) + dc) in self.food:
                    window[dr + 2, dc + 2] = 1.0
        position = self.agent / (self.size - 1)
        meters = np.zeros(8, np.float32)
        meters[0] = self.energy
        underfoot = np.zeros(15, np.float32)
        underfoot[0 if tuple(self.agent) in self.food else 14] = 1.0  # type 0 = "food", last slot = "none"
        extras = np.array([0.0, 1.0, self.steps / 100, self.steps / 100], np.float32)
        return np.concatenate([window.ravel(), position, meters, underfoot, extras]).astype(np.float32)

    def action_mask(self) -> np.ndarray:
        mask = np.ones(6, bool)
        for action, (dr, dc) in MOVES.items():
            row, col = int(self.agent[0]) + dr, int(self.agent[1]) + dc
            mask[action] = 0 <= row < self.size and 0 <= col < self.size
        mask[INTERACT] = tuple(self.agent) in self.food
        return mask

    def step(self, action: int) -> tuple[np.ndarray, float, bool]:
        if not self.action_mask()[action]:
            raise ValueError(f"action {action} is not allowed here")
        reward = 0.0
        if action in MOVES:
            self.agent = self.agent + MOVES[action]
        elif action == INTERACT:
            self.food.discard((int(self.agent[0]), int(self.agent[1])))
            self.energy = min(1.0, self.energy + 0.3)
            reward = 1.0
        self.energy -= 0.02
        self.steps += 1
        done = self.energy <= 0.0 or not self.food
        return self.observation(), reward, done


def run(model: HamletModel, episodes: int, max_steps: int, epsilon: float, seed: int) -> list[float]:
    world = ForagingWorld(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    returns = []
    for episode in range(episodes):
        obs, hidden, total = world.reset(), None, 0.0  # hidden=None: start of an episode (zeros)
        for _ in range(max_steps):
            result = model.predict(obs, hidden, epsilon=epsilon, action_mask=world.action_mask(), generator=generator)
            hidden = result.hidden  # carry the LSTM state to the next step
            obs, reward, done = world.step(int(result.actions[0]))
            total += reward
            if done:
                break
        returns.append(total)
        print(f"episode {episode}: {world.steps} steps, return {total:.1f}, food left {len(world.food)}")
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", type=Path, default=DEMO_L2, help="an L2/L3 checkpoint (default: the trained demo model)"
    )
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = HamletModel.load(args.checkpoint)
    if model.obs_dim != 54 or model.action_dim != 6:
        parser.error(f"this world speaks Hamlet's L2 layout (obs 54, 6 actions); the model has {model!r}")
    returns = run(model, args.episodes, args.max_steps, args.epsilon, args.seed)
    print(f"custom_env: {len(returns)} episodes, mean return {np.mean(returns):.2f}")


if __name__ == "__main__":
    main()
