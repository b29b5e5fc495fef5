"""Survival of a trained model against the uniform random valid policy, on the same episodes.

Both policies play the same ``episodes`` episodes through `townlet.env.evaluation.play_episodes`: same
level, same layout, same start cells (the env is seeded identically), both with action masks. The model
plays greedily (epsilon 0); recurrent models carry their LSTM state through each episode from zeros. The
random baseline is `townlet.env.run_random_policy` itself (`evaluate_random` is that function), so there
is one random policy everywhere.

Generalisation is measured on :func:`unseen_layouts`: one layout per episode, drawn from a random stream of
its own (never the stream a training run draws its layout from) and never equal to the layout the model
trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from townlet.env import LevelConfig, draw_layouts, get_level, layout_from_positions
from townlet.env.evaluation import (
    EpisodeResults,
    Policy,
    play_episodes,
    random_policy,
    run_episodes,
    run_random_policy,
)
from townlet.inference.model import HamletModel
from townlet.training.errors import TrainingConfigError

__all__ = [
    "EpisodeResults",
    "Policy",
    "SurvivalStats",
    "evaluate_model",
    "evaluate_random",
    "greedy_policy",
    "play_model",
    "play_random",
    "random_policy",
    "run_episodes",
    "unseen_layouts",
]

# Mixed into the evaluation seed so that unseen layouts come from a stream no training run draws from.
_UNSEEN_STREAM = 0x0DD_1A70


@dataclass(frozen=True)
class SurvivalStats:
    """Spread of survival steps over a set of episodes, and (when recorded) the mean number of distinct
    affordances used per episode."""

    episodes: int
    mean: float
    std: float
    median: float
    min: int
    max: int
    mean_affordances: float | None = None

    @classmethod
    def of(cls, steps: np.ndarray, affordances: np.ndarray | None = None) -> SurvivalStats:
        steps = np.asarray(steps)
        return cls(
            episodes=int(steps.size),
            mean=float(steps.mean()),
            std=float(steps.std()),
            median=float(np.median(steps)),
            min=int(steps.min()),
            max=int(steps.max()),
            mean_affordances=None if affordances is None else float(np.mean(affordances)),
        )

    @classmethod
    def of_results(cls, results: EpisodeResults) -> SurvivalStats:
        return cls.of(results.steps, results.affordances)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def play_model(model: HamletModel, level: str | LevelConfig, episodes: int, seed: int, **env: Any) -> EpisodeResults:
    """``model`` played greedily with action masks: survival steps and distinct affordances per episode
    (see `townlet.env.evaluation.play_episodes` for ``env``)."""
    level = get_level(level)
    if model.obs_dim != level.obs_dim:
        raise TrainingConfigError(
            f"the model reads observations of width {model.obs_dim} but level {level.name} produces "
            f"{level.obs_dim}; pick the level the model was trained on"
        )
    return play_episodes(level, greedy_policy(model), episodes, seed, **env)


def evaluate_model(model: HamletModel, level: str | LevelConfig, episodes: int, seed: int, **env: Any) -> np.ndarray:
    """Survival steps ``[episodes]`` of ``model`` played greedily with action masks (`play_model`)."""
    return play_model(model, level, episodes, seed, **env).steps


def play_random(level: str | LevelConfig, episodes: int, seed: int, **env: Any) -> EpisodeResults:
    """The random baseline's episodes, as `evaluate_random` plays them, with the affordances used."""
    return play_episodes(level, random_policy(seed), episodes, seed, **env)


# The one random baseline (the env package's): survival steps of the uniform random valid policy.
evaluate_random = run_random_policy
