"""Playing many episodes with a policy, and the random-policy baseline: the one implementation of both.

`play_episodes` runs any policy on batches of envs and records, per episode, the steps survived and how
many different affordances were used (successful INTERACTs). `run_random_policy` is the uniform random
valid policy played through it; `townlet.training.evaluate` plays trained models through the same
function, so a model and the random baseline given the same arguments face the same start states.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from townlet.env.actions import Action
from townlet.env.affordances import NUM_AFFORDANCE_TYPES
from townlet.env.config import LevelConfig, get_level
from townlet.env.errors import LevelConfigError, StateError
from townlet.env.vector_env import VectorTownletEnv

__all__ = [
    "EpisodeResults",
    "Policy",
    "play_episodes",
    "random_policy",
    "random_valid_actions",
    "run_episodes",
    "run_random_policy",
]

# act(obs [N, D], masks [N, A], carry) -> (actions [N], carry); carry is None at each batch's start.
Policy = Callable[[np.ndarray, np.ndarray, Any], tuple[np.ndarray, Any]]


@dataclass(frozen=True)
class EpisodeResults:
    """Per episode: ``steps [E]`` int64 survived, ``affordances [E]`` int64 distinct affordances used."""

    steps: np.ndarray
    affordances: np.ndarray


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


def random_policy(seed: int) -> Policy:
    """Uniform over the valid actions (`random_valid_actions`), seeded."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]).generate_state(1)[0])

    def act(obs: np.ndarray, masks: np.ndarray, carry: Any) -> tuple[np.ndarray, Any]:
        return random_valid_actions(masks, rng), None

    return act


def play_episodes(
    level: str | LevelConfig,
    policy: Policy,
    episodes: int,
    seed: int,
    *,
    layout: Mapping[str, Sequence[int]] | None = None,
    relayout: bool = False,
    layouts: np.ndarray | None = None,
    depletion_multiplier: float = 1.0,
    max_parallel: int = 256,
) -> EpisodeResults:
    """Play ``episodes`` episodes with ``policy`` in parallel batches; each lasts until death, retirement or
    the level's ``max_steps_per_episode``.

    Layouts: ``layout`` (one for all), ``relayout`` (a fresh one per episode from the env's generator),
    ``layouts`` (``[episodes, g, g]``, episode ``i`` on ``layouts[i]``), or none of them: one shared layout
    drawn from ``seed``. The env is reseeded per batch from ``seed``, so two policies given the same
    arguments face the same start states.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise LevelConfigError(f"episodes must be a positive int, got {episodes!r}")
    if max_parallel < 1:
        raise LevelConfigError(f"max_parallel must be >= 1, got {max_parallel}")
    level = get_level(level)
    if layouts is not None and (relayout or layout is not None or len(layouts) != episodes):
        raise LevelConfigError(
            f"layouts must hold one layout per episode ({episodes}), without layout= or relayout=; "
            f"got {len(layouts)} layouts"
        )
    if layout is None and not relayout:
        layout = VectorTownletEnv(level, 1, seed=seed).affordance_positions()
    batch = min(episodes, max_parallel)
    env = VectorTownletEnv(
        level,
        batch,
        relayout_each_reset=relayout,
        depletion_multiplier=depletion_multiplier,
        layout=None if relayout else layout,
    )
    steps: list[np.ndarray] = []
    used: list[np.ndarray] = []
    for index, remaining in enumerate(range(episodes, 0, -batch)):
        batch_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        obs = env.reset(seed=batch_seed)
        if layouts is not None:
            chosen = layouts[np.arange(index * batch, (index + 1) * batch) % episodes]  # the tail batch wraps
            env.set_state(dataclasses.replace(env.get_state(), layouts=chosen))
            obs = env.observe()
        carry: Any = None
        finished = np.zeros(batch, dtype=bool)
        seen = np.zeros((batch, NUM_AFFORDANCE_TYPES), dtype=bool)
        rows = np.arange(batch)
        while not finished.all():
            actions, carry = policy(obs, env.action_masks(), carry)
            obs, _, done, info = env.step(actions)
            finished = done | info["truncated"]
            hit = info["successful_interactions"] >= 0
            seen[rows[hit], info["successful_interactions"][hit]] = True
        kept = min(batch, remaining)
        steps.append(info["step_counts"][:kept])
        used.append(seen.sum(axis=1)[:kept])
    return EpisodeResults(np.concatenate(steps).astype(np.int64), np.concatenate(used).astype(np.int64))


def run_episodes(level: str | LevelConfig, policy: Policy, episodes: int, seed: int, **env: Any) -> np.ndarray:
    """Survival steps ``[episodes]`` of `play_episodes` (same arguments)."""
    return play_episodes(level, policy, episodes, seed, **env).steps


def run_random_policy(level: str | LevelConfig, episodes: int, seed: int = 0, **env: Any) -> np.ndarray:
    """Survival steps ``[episodes]`` int64 of the uniform random valid policy (`random_policy(seed)`).

    The one random baseline: ``hamlet-train evaluate`` and `townlet.training.evaluate.evaluate_random` are
    this function. ``env``: `play_episodes`'s keywords (``layout``, ``relayout``, ``layouts``,
    ``depletion_multiplier``, ``max_parallel``). The same seed gives the same result.
    """
    return run_episodes(level, random_policy(seed), episodes, seed, **env)
