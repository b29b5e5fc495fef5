"""The JSON messages the page receives, built by pure functions from the env state and a `Decision`.

Server -> page (``type``):

- ``session``: what is being shown (source, model, version, level, envs, controls' values, meter and
  action descriptions, every model the source has, the survival history so far). Sent on connect and
  whenever the model, version, level or envs change.
- ``frame``: one per env step: the state *after* the step, and the Q-values, mask and action of the
  decision that step applied (the Q-values the action was chosen from). `FRAME_SCHEMA` is its schema.
- ``status``: play/pause, speed, and whether the model's source answers (``server_up``, and
  ``server_problem``: why not, "" when it does). Sent after every command, and when ``server_up`` changes.
- ``error``: a message for the page: something is wrong now (the page shows it until a frame or a fresh
  session proves otherwise), or, with ``recovered: true``, a notice of something already repaired (a lost
  stream reopened).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from townlet.env import AFFORDANCE_NAMES, CASCADES, METER_NAMES, NO_AFFORDANCE, EnvState, LevelConfig
from townlet.env.meters import ENERGY, HEALTH

__all__ = [
    "ACTION_NAMES",
    "FRAME_SCHEMA",
    "SurvivalRecord",
    "frame_message",
    "layout_json",
    "level_json",
    "meters_json",
]

ACTION_NAMES: tuple[str, ...] = ("UP", "DOWN", "LEFT", "RIGHT", "INTERACT", "WAIT")


@dataclass(frozen=True)
class SurvivalRecord:
    """One finished episode: the model's survival and the random policy's from the same start state."""

    episode: int
    env: int
    steps: int
    reward: float
    reason: str
    """``died``, ``retired`` or ``truncated`` (the level's step limit)."""
    baseline: float
    """Mean survival of the random valid policy from the same start state."""
    model: str
    version: int

    def to_json(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "env": self.env,
            "steps": self.steps,
            "reward": round(self.reward, 4),
            "reason": self.reason,
            "baseline": round(self.baseline, 2),
            "model": self.model,
            "version": self.version,
        }


def meters_json() -> list[dict[str, Any]]:
    """The 8 meters in observation order with their critical thresholds: the cascade threshold below
    which a meter drains others, and whether the agent dies when it reaches 0."""
    thresholds: dict[int, float] = {}
    for cascade in CASCADES:
        thresholds[cascade.source] = max(thresholds.get(cascade.source, 0.0), cascade.threshold)
    return [
        {"name": name, "threshold": thresholds.get(i), "fatal_at_zero": i in (ENERGY, HEALTH)}
        for i, name in enumerate(METER_NAMES)
    ]


def level_json(level: LevelConfig) -> dict[str, Any]:
    return {
        "name": level.name,
        "grid_size": level.grid_size,
        "partial": level.partial_observability,
        "vision_range": level.vision_range if level.partial_observability else None,
        "temporal": level.temporal_mechanics,
        "max_steps": level.max_steps_per_episode,
        "obs_dim": level.obs_dim,
    }


def layout_json(layout: np.ndarray) -> list[dict[str, Any]]:
    """``[{name, x, y}]`` of one env's ``[g, g]`` layout (vocabulary index per cell), sorted by name."""
    ys, xs = np.nonzero(layout != NO_AFFORDANCE)
    cells = [
        {"name": AFFORDANCE_NAMES[int(layout[y, x])], "x": int(x), "y": int(y)} for y, x in zip(ys, xs, strict=True)
    ]
    return sorted(cells, key=lambda cell: str(cell["name"]))


def _status(state: EnvState, index: int) -> str:
    if state.dead[index]:
        return "died"
    if state.retired[index]:
        return "retired"
    if state.truncated[index]:
        return "truncated"
    return "alive"


def frame_message(
    *,
    tick: int,
    level: LevelConfig,
    state: EnvState,
    episodes: Sequence[int],
    returns: np.ndarray,
    q_values: np.ndarray,
    actions: np.ndarray,
    masks: np.ndarray,
    interactions: np.ndarray,
    model: str,
    version: int,
    finished: Sequence[SurvivalRecord] = (),
    layouts: Mapping[int, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """One ``frame`` message: every env after step ``tick`` (1 = the first step of the session).

    Args:
        state: the envs after the step.
        q_values: ``[N, A]`` the Q-values the actions were chosen from; ``actions [N]``, ``masks [N, A]``
            the allowed actions at that choice. ``interactions [N]`` affordance used (-1 none).
        layouts: per env index, its layout as `layout_json` gives it; pass only the envs whose layout the
            page has not seen yet (a new episode with redrawn layouts, the first frame).
    """
    masked_q = np.where(masks, q_values, -np.inf)
    greedy = masked_q.argmax(axis=1)
    envs = []
    for i in range(state.positions.shape[0]):
        used = int(interactions[i])
        env: dict[str, Any] = {
            "env": i,
            "episode": int(episodes[i]),
            "step": int(state.step_counts[i]),
            "reward": round(float(returns[i]), 4),
            "status": _status(state, i),
            "position": [int(state.positions[i, 0]), int(state.positions[i, 1])],
            "meters": [round(float(v), 4) for v in state.meters[i]],
            "q_values": [round(float(q), 4) for q in q_values[i]],
            "action": int(actions[i]),
            "greedy_action": int(greedy[i]),
            "mask": [bool(m) for m in masks[i]],
            "time_of_day": int(state.time_of_day[i]) if level.temporal_mechanics else None,
            "progress": int(state.interaction_progress[i]),
            "interaction": AFFORDANCE_NAMES[used] if used >= 0 else None,
        }
        if layouts is not None and i in layouts:
            env["layout"] = layouts[i]
        envs.append(env)
    return {
        "type": "frame",
        "tick": tick,
        "model": model,
        "version": version,
        "envs": envs,
        "finished": [record.to_json() for record in finished],
    }


_NUMBER = {"type": "number"}
_INT = {"type": "integer"}
_CELL = {
    "type": "object",
    "required": ["name", "x", "y"],
    "properties": {"name": {"enum": list(AFFORDANCE_NAMES)}, "x": _INT, "y": _INT},
}
_ENV = {
    "type": "object",
    "required": [
        "env",
        "episode",
        "step",
        "reward",
        "status",
        "position",
        "meters",
        "q_values",
        "action",
        "greedy_action",
        "mask",
        "time_of_day",
        "progress",
        "interaction",
    ],
    "additionalProperties": False,
    "properties": {
        "env": _INT,
        "episode": _INT,
        "step": _INT,
        "reward": _NUMBER,
        "status": {"enum": ["alive", "died", "retired", "truncated"]},
        "position": {"type": "array", "items": _INT, "minItems": 2, "maxItems": 2},
        "meters": {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 1},
            "minItems": 8,
            "maxItems": 8,
        },
        "q_values": {"type": "array", "items": _NUMBER, "minItems": 6, "maxItems": 6},
        "action": {"type": "integer", "minimum": 0, "maximum": 5},
        "greedy_action": {"type": "integer", "minimum": 0, "maximum": 5},
        "mask": {"type": "array", "items": {"type": "boolean"}, "minItems": 6, "maxItems": 6},
        "time_of_day": {"type": ["integer", "null"], "minimum": 0, "maximum": 23},
        "progress": _INT,
        "interaction": {"type": ["string", "null"]},
        "layout": {"type": "array", "items": _CELL},
    },
}
_RECORD = {
    "type": "object",
    "required": ["episode", "env", "steps", "reward", "reason", "baseline", "model", "version"],
    "properties": {"reason": {"enum": ["died", "retired", "truncated"]}, "steps": _INT, "baseline": _NUMBER},
}

#: JSON Schema (draft 2020-12) of a ``frame`` message.
FRAME_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["type", "tick", "model", "version", "envs", "finished"],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "frame"},
        "tick": {"type": "integer", "minimum": 1},
        "model": {"type": "string"},
        "version": _INT,
        "envs": {"type": "array", "items": _ENV, "minItems": 1},
        "finished": {"type": "array", "items": _RECORD},
    },
}
