"""Random-policy baseline: uniform random valid actions, and survival steps over many episodes.

Used to compare trained agents against chance on the same level.
"""

from __future__ import annotations

import numpy as np

from townlet.env.actions import Action
from townlet.env.config import LevelConfig
from townlet.env.errors import LevelConfigError, StateError
from townlet.env.vector_env import VectorTownletEnv

__all__ = ["random_valid_actions", "run_random_policy"]


def random_valid_actions(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row drawn uniformly among the allowed ones.

    Args:
        masks: ``[N, A]`` bool, True = allowed.
        rng: numpy Generator.

    Returns:
        ``[N]`` int64. Rows with no allowed action (finished envs) get WAIT, which a finished env ignores.
    """
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.dtype != bool:
        raise StateError(f"masks must be a [N, A] bool array, got dtype {masks.dtype} shape {masks.shape}")
    scores = np.where(masks, rng.random(masks.shape), -1.0)
    actions = scores.argmax(axis=1)
    return np.where(masks.any(axis=1), actions, Action.WAIT).astype(np.int64)


def run_random_policy(
    level: str | LevelConfig,
    episodes: int,
    seed: int | None = 0,
    *,
    depletion_multiplier: float = 1.0,
    relayout_each_reset: bool = False,
    max_parallel: int = 1024,
) -> np.ndarray:
    """Survival steps of ``episodes`` episodes played by the uniform random valid policy.

    Episodes run in parallel batches of at most ``max_parallel`` envs; each lasts until death,
    retirement or the level's ``max_steps_per_episode``. The same seed gives the same result.

    Returns:
        ``[episodes]`` int64 steps survived per episode.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise LevelConfigError(f"episodes must be a positive int, got {episodes!r}")
    if max_parallel < 1:
        raise LevelConfigError(f"max_parallel must be >= 1, got {max_parallel}")
    env_seed, policy_seed = np.random.SeedSequence(seed).generate_state(2)
    rng = np.random.default_rng(policy_seed)
    batch = min(episodes, max_parallel)
    env = VectorTownletEnv(
        level,
        batch,
        seed=int(env_seed),
        relayout_each_reset=relayout_each_reset,
        depletion_multiplier=depletion_multiplier,
    )
    survived: list[np.ndarray] = []
    remaining = episodes
    while remaining > 0:
        env.reset()
        finished = np.zeros(batch, dtype=bool)
        while not finished.all():
            _, _, done, info = env.step(random_valid_actions(env.action_masks(), rng))
            finished = done | info["truncated"]
        survived.append(info["step_counts"][: min(batch, remaining)])
        remaining -= batch
    return np.concatenate(survived).astype(np.int64)
