"""Meter dynamics of one step as pure functions over ``[N, 8]`` meter arrays.

Each function returns a new array clamped to [0, 1] and leaves its input untouched. The simulator calls
them in this order (after movement and interactions): :func:`apply_action_costs` (right after the
move), :func:`apply_base_depletion`, :func:`apply_fitness_modulation`, :func:`apply_cascades`, then
:func:`terminal_mask` and :func:`compute_reward`.

Meters are float32 and every rate is a float32 constant, and each function performs Hamlet's operations
in Hamlet's order, so the rounding follows Hamlet's torch step (float64 input is cast to float32).
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
    METER_DTYPE,
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


def _float32(meters: np.ndarray) -> np.ndarray:
    array: np.ndarray = np.asarray(meters, dtype=METER_DTYPE)
    return array


def action_cost_table(move_cost: float, wait_cost: float, interact_cost: float) -> np.ndarray:
    """``[6, 8]`` meter cost of each action.

    ``interact_cost`` is charged on INTERACT. Hamlet reads the pack's ``energy_interact_depletion`` (0.0029
    in L0_0 and L0_5, 0.0 in L1-L3) and never applies it, so the shipped levels set 0.0 and step exactly as
    Hamlet does; a level variant with a non-zero cost is charged it.
    """
    table = np.zeros((ACTION_DIM, NUM_METERS), dtype=METER_DTYPE)
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
    return _clip01(_float32(meters) - cost_table[actions].astype(METER_DTYPE, copy=False))


def apply_base_depletion(meters: np.ndarray, multiplier: float | np.ndarray) -> np.ndarray:
    """Subtract ``BASE_DEPLETION * multiplier`` (the curriculum multiplier, scalar or ``[N, 1]``)."""
    # A Python float stays "weak" in numpy's promotion, so the product is float32 as in Hamlet.
    scale = float(multiplier) if np.ndim(multiplier) == 0 else np.asarray(multiplier, dtype=METER_DTYPE)
    return _clip01(_float32(meters) - BASE_DEPLETION * scale)


def apply_fitness_modulation(meters: np.ndarray) -> np.ndarray:
    """Health loss driven by low fitness: 0.0005/step at full fitness up to 0.003 at zero."""
    m = FITNESS_MODULATION
    out = np.array(meters, dtype=METER_DTYPE)
    loss = m["baseline"] * (m["base"] + m["range"] * (1.0 - out[:, FITNESS]))
    out[:, HEALTH] = _clip01(out[:, HEALTH] - loss)
    return out


class _CascadeGroup(NamedTuple):
    sources: np.ndarray  # [k] meter index
    targets: np.ndarray  # [k] meter index
    depths: np.ndarray  # [k] how many earlier members of the group hit the same target
    thresholds: np.ndarray  # [k] float32
    strengths: np.ndarray  # [k] float32


@functools.lru_cache(maxsize=16)
def _cascade_groups(cascades: tuple[Cascade, ...]) -> tuple[_CascadeGroup, ...]:
    """Split the ordered cascades into runs whose penalties can all be computed up front: a run ends
    before a cascade whose source an earlier member of the run targets."""
    runs: list[list[Cascade]] = []
    for c in cascades:
        if c.strength < 0 or c.threshold <= 0:
            raise ValueError(f"cascade {c} needs strength >= 0 and threshold > 0")
        if runs and c.source not in {member.target for member in runs[-1]}:
            runs[-1].append(c)
        else:
            runs.append([c])
    return tuple(
        _CascadeGroup(
            sources=np.array([c.source for c in run]),
            targets=np.array([c.target for c in run]),
            depths=np.array([sum(m.target == c.target for m in run[:i]) for i, c in enumerate(run)]),
            thresholds=np.array([c.threshold for c in run], dtype=METER_DTYPE),
            strengths=np.array([c.strength for c in run], dtype=METER_DTYPE),
        )
        for run in runs
    )


def apply_cascades(meters: np.ndarray, cascades: tuple[Cascade, ...] = CASCADES) -> np.ndarray:
    """Apply threshold cascades in the given order (category order for :data:`CASCADES`).

    A cascade whose source is below its threshold subtracts ``strength * ((threshold - source) / threshold)``
    from its target (clamped), each reading the meters as left by the cascades before it, in float32, as
    Hamlet does one cascade at a time. Vectorised without changing a bit: a run of cascades where no source
    is the target of an earlier member (for :data:`CASCADES`, all ten) computes its penalties in one pass;
    penalties are scattered into ``[depth, N, 8]`` so that each target loses its own penalties one by one in
    cascade order (the others lose an exact 0); one clamp at the end equals Hamlet's clamp after each
    cascade because penalties are never negative.
    """
    out = np.array(meters, dtype=METER_DTYPE)
    for group in _cascade_groups(cascades):
        deficit = np.maximum(group.thresholds - out[:, group.sources], 0.0) / group.thresholds
        penalty = group.strengths * deficit  # [N, k]
        layered = np.zeros((int(group.depths.max()) + 1, *out.shape), dtype=METER_DTYPE)
        layered[group.depths, :, group.targets] = penalty.T
        for layer in layered:
            out = out - layer
        out = _clip01(out)
    return out


def terminal_mask(meters: np.ndarray) -> np.ndarray:
    """``[N]`` bool: health <= 0 or energy <= 0."""
    return (meters[:, HEALTH] <= 0.0) | (meters[:, ENERGY] <= 0.0)


def compute_reward(meters: np.ndarray, dead: np.ndarray, retired: np.ndarray) -> np.ndarray:
    """``[N]`` float32 reward: health x energy while alive, 0 when dead, plus 1.0 on the retirement step.

    As in Hamlet the retirement bonus is paid whenever ``retired`` is set, also to an agent that died on
    that same step (it gets 0.0 + 1.0).
    """
    meters = _float32(meters)
    reward = np.where(dead, np.float32(0.0), meters[:, HEALTH] * meters[:, ENERGY])
    reward = reward + np.where(retired, np.float32(RETIREMENT_BONUS), np.float32(0.0))
    return reward.astype(np.float32)
