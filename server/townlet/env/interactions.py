"""INTERACT handling as pure functions: instant mode (L0-L2) and multi-tick mode (temporal mechanics, L3).

Both are vectorised over agents; no per-agent Python loop. Effects are added (clamped to [0, 1]), then the
money cost is subtracted (clamped). An agent that cannot pay wastes the step.

Affordability is Hamlet's float32 comparison ``money >= price`` with no slack: money exactly equal to a
price pays it, and from $50 a Bed ($5) can be bought 9 times, not 10 (after nine float32 subtractions
the money left is 0.049999963, just under the float32 price 0.05).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from townlet.env.affordances import NO_AFFORDANCE, TABLES, AffordanceTables, is_open
from townlet.env.meters import MONEY

__all__ = [
    "MultiTickResult",
    "apply_instant_interactions",
    "apply_multi_tick_interactions",
    "cancel_progress",
]


def _pay_and_apply(meters: np.ndarray, success: np.ndarray, effects: np.ndarray, cost: np.ndarray) -> np.ndarray:
    gained: np.ndarray = np.minimum(np.maximum(meters + effects * success[:, None], 0.0), 1.0)
    gained[:, MONEY] = np.maximum(gained[:, MONEY] - cost * success, 0.0)
    return gained


def apply_instant_interactions(
    meters: np.ndarray,
    affordance_here: np.ndarray,
    interacting: np.ndarray,
    tables: AffordanceTables = TABLES,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the instant effects of the affordance under each INTERACT-ing agent that can pay.

    Args:
        meters: ``[N, 8]`` float32.
        affordance_here: ``[N]`` vocabulary index under each agent (``NO_AFFORDANCE`` if none).
        interacting: ``[N]`` bool, the agent chose INTERACT (and is still active).

    Returns:
        ``(meters [N, 8], success [N] bool)``.
    """
    cost = tables.instant_cost[affordance_here]
    success = interacting & (affordance_here != NO_AFFORDANCE)
    success &= meters[:, MONEY] >= cost
    return _pay_and_apply(meters, success, tables.instant_effects[affordance_here], cost), success


class MultiTickResult(NamedTuple):
    meters: np.ndarray  # [N, 8]
    progress: np.ndarray  # [N] int, ticks done on the current interaction (0 = none in progress)
    target: np.ndarray  # [N] int, affordance of the interaction in progress, NO_AFFORDANCE if none
    success: np.ndarray  # [N] bool, a tick was paid and applied this step
    completed: np.ndarray  # [N] bool, the completion bonus was applied this step


def apply_multi_tick_interactions(
    meters: np.ndarray,
    affordance_here: np.ndarray,
    interacting: np.ndarray,
    hour: np.ndarray,
    progress: np.ndarray,
    target: np.ndarray,
    tables: AffordanceTables = TABLES,
) -> MultiTickResult:
    """One tick of the multi-tick interactions.

    An INTERACT on an open affordance that the agent can pay for this tick advances its progress (or
    restarts it at 1 if the previous interaction was on another affordance), applies the per-tick cost
    and effects, and on the last tick the completion bonus too, after which progress returns to 0.
    Unpaid or closed INTERACTs change nothing.

    Args:
        meters: ``[N, 8]``; affordance_here, interacting: as in :func:`apply_instant_interactions`.
        hour: ``[N]`` hour of day before this step's clock tick.
        progress, target: ``[N]`` int state from the previous step.
    """
    cost = tables.tick_cost[affordance_here]
    tick = interacting & is_open(affordance_here, hour)
    tick &= meters[:, MONEY] >= cost
    new_progress = np.where(tick, np.where(target == affordance_here, progress + 1, 1), progress)
    completed = tick & (new_progress >= tables.ticks[affordance_here])
    effects = (
        tables.tick_effects[affordance_here] * tick[:, None]
        + tables.completion_effects[affordance_here] * completed[:, None]
    )
    new_meters = _pay_and_apply(meters, tick, effects, cost)
    new_target = np.where(tick, affordance_here, target)
    new_progress = np.where(completed, 0, new_progress)
    new_target = np.where(completed, NO_AFFORDANCE, new_target)
    return MultiTickResult(new_meters, new_progress, new_target, tick, completed)


def cancel_progress(progress: np.ndarray, target: np.ndarray, moved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Agents that moved off their cell lose the interaction in progress (costs already paid are lost)."""
    return np.where(moved, 0, progress), np.where(moved, NO_AFFORDANCE, target)
