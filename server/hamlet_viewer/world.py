"""Which Townlet world a model plays in: the level (from its metadata or its observation width) and the
affordance layout it was trained on (recorded in the checkpoint, or redrawn from the training seed)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from hamlet_viewer.errors import ViewerConfigError
from townlet.env import LEVELS, LevelConfig, get_level, training_layout

__all__ = ["choose_level", "compatible_levels", "trained_layout"]

Layout = dict[str, tuple[int, int]]


def compatible_levels(obs_dim: int) -> list[str]:
    """Names of the levels whose observation is ``obs_dim`` wide (a model can play any of them)."""
    return [name for name, level in LEVELS.items() if level.obs_dim == obs_dim]


def choose_level(obs_dim: int, requested: str | None, meta: Mapping[str, Any]) -> LevelConfig:
    """The level to play: ``requested`` if given, else the one the model was trained on (metadata
    ``level``), else the first level of matching observation width."""
    names = compatible_levels(obs_dim)
    if not names:
        raise ViewerConfigError(
            f"no Townlet level has observations {obs_dim} wide; levels: "
            + ", ".join(f"{n} ({lvl.obs_dim})" for n, lvl in LEVELS.items())
        )
    if requested:
        try:
            level = get_level(requested)
        except ValueError as exc:
            raise ViewerConfigError(f"level {requested!r}: {exc}") from None
        if level.obs_dim != obs_dim:
            raise ViewerConfigError(
                f"level {level.name} has observations {level.obs_dim} wide but the model takes {obs_dim}; "
                f"pick one of {names}"
            )
        return level
    trained = meta.get("level")
    if isinstance(trained, str) and trained in names:
        return get_level(trained)
    return get_level(names[0])


def trained_layout(meta: Mapping[str, Any], level: LevelConfig) -> Layout | None:
    """``{affordance: (x, y)}`` the model was trained on in ``level``, or None when unknown (or when it
    trained on redrawn layouts, or on another level).

    Local checkpoints carry ``affordance_layout``; a server's metadata carries the scalar ``level``,
    ``seed`` and ``relayout`` (as strings), from which `training_layout` redraws it exactly as the trainer drew it.
    """
    if str(meta.get("level", "")) != level.name or str(meta.get("relayout", "")).lower() in ("true", "1"):
        return None
    recorded = meta.get("affordance_layout")
    if isinstance(recorded, str):
        try:
            recorded = json.loads(recorded)
        except ValueError:
            recorded = None
    if isinstance(recorded, Mapping) and set(recorded) == set(level.enabled_affordances):
        return {str(name): (int(pos[0]), int(pos[1])) for name, pos in recorded.items()}
    seed = meta.get("seed")
    try:
        seed_int = int(seed) if seed is not None else None
    except (TypeError, ValueError):
        return None
    if seed_int is None or seed_int < 0:
        return None
    return training_layout(level, seed_int)
