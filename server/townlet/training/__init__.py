"""``townlet.training``: a compact DQN trainer for Hamlet's two networks, writing Hamlet-layout checkpoints.

    from townlet.training import TrainConfig, train
    result = train(TrainConfig(level="L1", episodes=300, out="runs/L1"))   # checkpoint_ep*.pt + model_ep*.pt

Modules: `config` (`TrainConfig`), `replay` (transition and sequence replay), `dqn` (TD losses),
`rnd` (Hamlet's RND novelty bonus, ``--rnd-weight``), `trainer` (`train`), `evaluate` (model vs random
survival), `checkpoint_v2` (Hamlet's v2 file layout), `cli` (``hamlet-train``), `recipe` (a shipped model's
documented command and the head of its log: the check that the command still makes the model). See
``docs/TRAINING.md``.
Names are imported lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from townlet.training.config import TrainConfig
    from townlet.training.errors import ResumeError, TrainingConfigError, TrainingError
    from townlet.training.evaluate import SurvivalStats, evaluate_model, evaluate_random
    from townlet.training.trainer import EpisodeStats, TrainResult, train

_HOMES = {
    "TrainConfig": "config",
    "ResumeError": "errors",
    "TrainingConfigError": "errors",
    "TrainingError": "errors",
    "SurvivalStats": "evaluate",
    "evaluate_model": "evaluate",
    "evaluate_random": "evaluate",
    "EpisodeStats": "trainer",
    "TrainResult": "trainer",
    "train": "trainer",
}

__all__ = [
    "EpisodeStats",
    "ResumeError",
    "SurvivalStats",
    "TrainConfig",
    "TrainResult",
    "TrainingConfigError",
    "TrainingError",
    "evaluate_model",
    "evaluate_random",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'townlet.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"townlet.training.{_HOMES[name]}"), name)
