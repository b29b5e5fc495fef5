"""The six discrete actions, movement on the grid and action masks.

Positions are ``(x, y)`` = (column, row) with the origin at the top-left, so UP decreases ``y``.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from townlet.env.affordances import NO_AFFORDANCE, is_open

__all__ = ["ACTION_DIM", "MOVE_DELTAS", "Action", "apply_movement", "compute_action_masks"]


class Action(IntEnum):
    UP = 0
    DOWN = 1
    LEFT = 2
    RIGHT = 3
    INTERACT = 4
    WAIT = 5


ACTION_DIM = len(Action)

#: ``[6, 2]`` (dx, dy) per action; INTERACT and WAIT do not move.
MOVE_DELTAS = np.array([[0, -1], [0, 1], [-1, 0], [1, 0], [0, 0], [0, 0]], dtype=np.int64)
MOVE_DELTAS.setflags(write=False)


def apply_movement(positions: np.ndarray, actions: np.ndarray, grid_size: int) -> np.ndarray:
    """New positions after each action, clamped to the grid.

    Args:
        positions: ``[N, 2]`` int (x, y).
        actions: ``[N]`` int in ``0..5``.

    Returns:
        ``[N, 2]`` int, a new array.
    """
    moved: np.ndarray = np.minimum(np.maximum(positions + MOVE_DELTAS[actions], 0), grid_size - 1)
    return moved


def compute_action_masks(
    positions: np.ndarray,
    affordance_here: np.ndarray,
    grid_size: int,
    finished: np.ndarray,
    hour: np.ndarray | None = None,
) -> np.ndarray:
    """Which actions are allowed (True) for each agent.

    A move off the grid is masked; INTERACT needs a deployed affordance under the agent (open at ``hour``
    when temporal mechanics are on, i.e. ``hour`` is given; affordability is not checked); WAIT is always
    allowed; every action is masked for a finished agent (dead, retired or truncated).

    Args:
        positions: ``[N, 2]`` int (x, y).
        affordance_here: ``[N]`` vocabulary index of the affordance under each agent, ``NO_AFFORDANCE`` if none.
        grid_size: side of the grid.
        finished: ``[N]`` bool.
        hour: ``[N]`` hour of day, or None without temporal mechanics.

    Returns:
        ``[N, 6]`` bool.
    """
    x, y = positions[:, 0], positions[:, 1]
    interact = affordance_here != NO_AFFORDANCE
    if hour is not None:
        interact = interact & is_open(affordance_here, hour)
    masks = np.stack(
        [y > 0, y < grid_size - 1, x > 0, x < grid_size - 1, interact, np.ones_like(interact)],
        axis=1,
    )
    masks[finished] = False
    return masks
