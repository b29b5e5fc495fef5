"""Meter dynamics of one step as pure functions over ``[N, 8]`` meter arrays.

Each function returns a new array clamped to [0, 1] and leaves its input untouched. The simulator calls
them in this order (after movement and interactions): :func:`apply_action_costs` (right after the
move), :func:`apply_base_depletion`, :func:`apply_fitness_modulation`, :func:`apply_cascades`, then
:func:`terminal_mask` and :func:`compute_reward`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from townlet.env.actions import ACTION_DIM, Action
from townlet.env.meters import (
    BASE_DEPLETION,
    CASCADES,
    ENERGY,
    FITNESS,
    HEALTH,
    HYGIENE,
    NUM_METERS,
    SATIATION,
    Cascade,
)

__all__ = [
    "FITNESS_MODULATION",
    "MOVE_HYGIENE_COST",
    "MOVE_SATIATION_COST",
    "RETIREMENT_BONUS",
    "action_cost_table",
    "apply_action_costs",
    "apply_base_depletion",
    "apply_cascades",
    "apply_fitness_modulation",
    "compute_reward",
    "terminal_mask",
]

#: Hard-coded extra costs of a move (upstream does not read them from YAML).
MOVE_HYGIENE_COST = 0.003
MOVE_SATIATION_COST = 0.004

#: health -= baseline * (base + range * (1 - fitness)) per step, not scaled by the curriculum.
FITNESS_MODULATION = {"baseline": 0.001, "base": 0.5, "range": 2.5}

#: Reward added on the step an agent reaches its lifespan.
RETIREMENT_BONUS = 1.0


def _clip01(values: np.ndarray) -> np.ndarray:
    """Clamp to [0, 1] (``np.minimum``/``np.maximum`` are several times faster than ``np.clip`` on tiny arrays)."""
    clamped: np.ndarray = np.minimum(np.maximum(values, 0.0), 1.0)
    return clamped


def action_cost_table(move_cost: float, wait_cost: float, interact_cost: float) -> np.ndarray:
    """``[6, 8]`` meter cost of each action.

    Unlike upstream, ``interact_cost`` is charged on INTERACT (upstream accepts it and never applies it);
    every shipped level sets it to 0.0, so the dynamics are the same.
    """
    table = np.zeros((ACTION_DIM, NUM_METERS))
    for move in (Action.UP, Action.DOWN, Action.LEFT, Action.RIGHT):
        table[move, ENERGY] = move_cost
        table[move, HYGIENE] = MOVE_HYGIENE_COST
        table[move, SATIATION] = MOVE_SATIATION_COST
    table[Action.INTERACT, ENERGY] = interact_cost
    table[Action.WAIT, ENERGY] = wait_cost
    return table


def apply_action_costs(meters: np.ndarray, actions: np.ndarray, cost_table: np.ndarray) -> np.ndarray:
    """Subtract the cost of each agent's action.

    Args:
        meters: ``[N, 8]``.
        actions: ``[N]`` int in ``0..5``.
        cost_table: ``[6, 8]`` from :func:`action_cost_table`.
    """
    return _clip01(meters - cost_table[actions])


def apply_base_depletion(meters: np.ndarray, multiplier: float | np.ndarray) -> np.ndarray:
    """Subtract ``BASE_DEPLETION * multiplier`` (the curriculum multiplier, scalar or ``[N, 1]``)."""
    return _clip01(meters - BASE_DEPLETION * multiplier)


def apply_fitness_modulation(meters: np.ndarray) -> np.ndarray:
    """Health loss driven by low fitness: 0.0005/step at full fitness up to 0.003 at zero."""
    m = FITNESS_MODULATION
    loss = m["baseline"] * (m["base"] + m["range"] * (1.0 - meters[:, FITNESS]))
    out = meters.copy()
    out[:, HEALTH] = _clip01(out[:, HEALTH] - loss)
    return out


class _CascadeGroup(NamedTuple):
    sources: np.ndarray  # [k] meter index
    thresholds: np.ndarray  # [k]
    weights: np.ndarray  # [k, 8]: strength / threshold on the target column


@functools.lru_cache(maxsize=16)
def _cascade_groups(cascades: tuple[Cascade, ...]) -> tuple[_CascadeGroup, ...]:
    """Split the ordered cascades into runs that can be applied at once: a run ends before a cascade whose
    source an earlier member of the run targets. Within a run every source is read before any write,
    and the (non-negative) penalties on one target add up before clamping, exactly as one at a time."""
    runs: list[list[Cascade]] = []
    for c in cascades:
        if c.strength < 0 or c.threshold <= 0:
            raise ValueError(f"cascade {c} needs strength >= 0 and threshold > 0")
        if runs and c.source not in {member.target for member in runs[-1]}:
            runs[-1].append(c)
        else:
            runs.append([c])
    groups = []
    for run in runs:
        weights = np.zeros((len(run), NUM_METERS))
        for i, c in enumerate(run):
            weights[i, c.target] = c.strength / c.threshold
        thresholds = np.array([c.threshold for c in run])
        groups.append(_CascadeGroup(np.array([c.source for c in run]), thresholds, weights))
    return tuple(groups)


def apply_cascades(meters: np.ndarray, cascades: tuple[Cascade, ...] = CASCADES) -> np.ndarray:
    """Apply threshold cascades in the given order (category order for :data:`CASCADES`).

    A cascade whose source is below its threshold subtracts ``strength * (threshold - source) / threshold``
    from its target, each reading the meters as left by the cascades before it. A run of cascades where no
    source is the target of an earlier member is applied as one matrix product (for :data:`CASCADES`
    that is all ten: each category only lowers meters that earlier categories have already read).
    """
    out = meters
    for group in _cascade_groups(cascades):
        deficit = np.maximum(group.thresholds - out[:, group.sources], 0.0)
        out = _clip01(out - deficit @ group.weights)
    return out if out is not meters else meters.copy()


def terminal_mask(meters: np.ndarray) -> np.ndarray:
    """``[N]`` bool: health <= 0 or energy <= 0."""
    return (meters[:, HEALTH] <= 0.0) | (meters[:, ENERGY] <= 0.0)


def compute_reward(meters: np.ndarray, dead: np.ndarray, retired: np.ndarray) -> np.ndarray:
    """``[N]`` float32 reward: health x energy while alive, 0 when dead, +1.0 on the retirement step."""
    reward = np.where(dead, 0.0, meters[:, HEALTH] * meters[:, ENERGY])
    reward = reward + np.where(retired & ~dead, RETIREMENT_BONUS, 0.0)
    return reward.astype(np.float32)
