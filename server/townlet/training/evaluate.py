"""Survival of a trained model against the uniform random valid policy, on the same episodes.

Both policies play the same ``episodes`` episodes: same level, same layout, same start cells (the env is
seeded identically), both with action masks. The model plays greedily (epsilon 0); recurrent models carry
their LSTM state through each episode from zeros.

Generalisation is measured on :func:`unseen_layouts`: one layout per episode, drawn from a random stream of
its own (never the stream a training run draws its layout from) and never equal to the layout the model
trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from townlet.env import (
    LevelConfig,
    VectorTownletEnv,
    draw_layouts,
    get_level,
    layout_from_positions,
    random_valid_actions,
)
from townlet.inference.model import HamletModel
from townlet.training.errors import TrainingConfigError

__all__ = [
    "Policy",
    "SurvivalStats",
    "evaluate_model",
    "evaluate_random",
    "greedy_policy",
    "random_policy",
    "run_episodes",
    "unseen_layouts",
]

# Mixed into the evaluation seed so that unseen layouts come from a stream no training run draws from.
_UNSEEN_STREAM = 0x0DD_1A70

# act(obs [N, D], masks [N, A], carry) -> (actions [N], carry); carry is None at each batch's start.
Policy = Callable[[np.ndarray, np.ndarray, Any], tuple[np.ndarray, Any]]


@dataclass(frozen=True)
class SurvivalStats:
    """Spread of survival steps over a set of episodes."""

    episodes: int
    mean: float
    std: float
    median: float
    min: int
    max: int

    @classmethod
    def of(cls, steps: np.ndarray) -> SurvivalStats:
        steps = np.asarray(steps)
        return cls(
            episodes=int(steps.size),
            mean=float(steps.mean()),
            std=float(steps.std()),
            median=float(np.median(steps)),
            min=int(steps.min()),
            max=int(steps.max()),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_episodes(
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
) -> np.ndarray:
    """Play ``episodes`` episodes with ``policy`` in parallel batches; returns ``[episodes]`` survival steps.

    Layouts: ``layout`` (one for all), ``relayout`` (a fresh one per episode from the env's generator),
    ``layouts`` (``[episodes, g, g]``, episode ``i`` on ``layouts[i]``, e.g. :func:`unseen_layouts`), or none
    of them: one shared layout drawn from ``seed``. The env is reseeded per batch from ``seed``, so two
    policies given the same arguments face the same start states.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise TrainingConfigError(f"episodes must be a positive int, got {episodes!r}")
    level = get_level(level)
    if layouts is not None and (relayout or layout is not None or len(layouts) != episodes):
        raise TrainingConfigError(
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
    survived: list[np.ndarray] = []
    for index, remaining in enumerate(range(episodes, 0, -batch)):
        batch_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        obs = env.reset(seed=batch_seed)
        if layouts is not None:
            chosen = layouts[np.arange(index * batch, (index + 1) * batch) % episodes]  # the tail batch wraps
            env.set_state(dataclasses.replace(env.get_state(), layouts=chosen))
            obs = env.observe()
        carry: Any = None
        finished = np.zeros(batch, dtype=bool)
        while not finished.all():
            actions, carry = policy(obs, env.action_masks(), carry)
            obs, _, done, info = env.step(actions)
            finished = done | info["truncated"]
        survived.append(info["step_counts"][: min(batch, remaining)])
    return np.concatenate(survived).astype(np.int64)


def greedy_policy(model: HamletModel) -> Policy:
    """The model's masked argmax; the LSTM state (if any) starts at zeros and follows the episode."""

    def act(obs: np.ndarray, masks: np.ndarray, hidden: Any) -> tuple[np.ndarray, Any]:
        # Finished envs have every action masked; give them WAIT as allowed so predict accepts the mask.
        masks = masks.copy()
        masks[~masks.any(axis=1), -1] = True
        with torch.no_grad():
            result = model.predict(torch.from_numpy(obs), hidden, epsilon=0.0, action_mask=torch.from_numpy(masks))
        return result.actions.cpu().numpy(), result.hidden

    return act


def random_policy(seed: int) -> Policy:
    """Uniform over the valid actions (`townlet.env.random_valid_actions`), seeded."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]).generate_state(1)[0])

    def act(obs: np.ndarray, masks: np.ndarray, carry: Any) -> tuple[np.ndarray, Any]:
        return random_valid_actions(masks, rng), None

    return act


def unseen_layouts(
    level: str | LevelConfig,
    episodes: int,
    seed: int,
    exclude: Sequence[Mapping[str, Sequence[int]]] = (),
) -> np.ndarray:
    """``[episodes, g, g]`` layouts for evaluating generalisation, one per episode.

    They come from a generator seeded with ``(seed, a fixed stream tag)``, which no training run uses (a
    run's layout is drawn from ``seed`` alone), and any layout equal to one in ``exclude`` (pass the
    layout the model trained on) is redrawn, so none of them is a training layout.
    """
    level = get_level(level)
    g, ids = level.grid_size, level.affordance_ids
    banned = [layout_from_positions(x, g, level.enabled_affordances) for x in exclude]
    rng = np.random.default_rng(np.random.SeedSequence([seed, _UNSEEN_STREAM]))
    layouts = draw_layouts(rng, g, ids, episodes)
    for i in range(episodes):
        while any(np.array_equal(layouts[i], b) for b in banned):
            layouts[i] = draw_layouts(rng, g, ids, 1)[0]
    return layouts


def evaluate_model(model: HamletModel, level: str | LevelConfig, episodes: int, seed: int, **env: Any) -> np.ndarray:
    """Survival steps of ``model`` played greedily with action masks (see `run_episodes` for ``env``)."""
    level = get_level(level)
    if model.obs_dim != level.obs_dim:
        raise TrainingConfigError(
            f"the model reads observations of width {model.obs_dim} but level {level.name} produces "
            f"{level.obs_dim}; pick the level the model was trained on"
        )
    return run_episodes(level, greedy_policy(model), episodes, seed, **env)


def evaluate_random(level: str | LevelConfig, episodes: int, seed: int, **env: Any) -> np.ndarray:
    """Survival steps of the uniform random valid policy on the same episodes as `evaluate_model`."""
    return run_episodes(level, random_policy(seed), episodes, seed, **env)
