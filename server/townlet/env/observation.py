"""Observation encoding as pure, vectorised functions (float32, one row per agent).

Full observability (L0_0, L0_5, L1)::

    [grid (g*g) | meters (8) | affordance one-hot (15) | extras (4)]

Partial observability (L2, L3)::

    [window ((2r+1)^2) | position (2) | meters (8) | affordance one-hot (15) | extras (4)]

Layouts are ``[N, g, g]`` integer arrays indexed ``[n, y, x]`` holding the vocabulary index of the
deployed affordance in each cell, ``NO_AFFORDANCE`` where empty.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from townlet.env.affordances import NO_AFFORDANCE
from townlet.env.meters import AGENT_LIFESPAN

__all__ = [
    "EXTRAS_DIM",
    "ONE_HOT_DIM",
    "affordance_one_hot",
    "affordance_under_agents",
    "encode_extras",
    "encode_full_observation",
    "encode_partial_observation",
]

ONE_HOT_DIM = NO_AFFORDANCE + 1
EXTRAS_DIM = 4


def affordance_under_agents(layout: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``[N]`` vocabulary index of the affordance in each agent's cell (``NO_AFFORDANCE`` if none)."""
    here: np.ndarray = layout[np.arange(len(positions)), positions[:, 1], positions[:, 0]]
    return here


def affordance_one_hot(affordance_here: np.ndarray) -> np.ndarray:
    """``[N, 15]`` one-hot of the affordance under each agent; the last slot means "none"."""
    one_hot = np.zeros((len(affordance_here), ONE_HOT_DIM), dtype=np.float32)
    one_hot[np.arange(len(affordance_here)), affordance_here] = 1.0
    return one_hot


def encode_extras(
    time_of_day: np.ndarray,
    interaction_progress: np.ndarray,
    step_counts: np.ndarray,
    temporal_mechanics: bool,
    agent_lifespan: int = AGENT_LIFESPAN,
) -> np.ndarray:
    """``[N, 4]``: sin(2*pi*t/24), cos(2*pi*t/24), progress/10, clamp(step_count/lifespan, 0, 1).

    Without temporal mechanics the hour is taken as 0 and progress as 0 (so the first three are 0, 1, 0).
    """
    n = len(step_counts)
    extras = np.empty((n, EXTRAS_DIM), dtype=np.float32)
    if temporal_mechanics:
        angle = 2.0 * np.pi * np.asarray(time_of_day, dtype=np.float64) / 24.0
        extras[:, 0] = np.sin(angle)
        extras[:, 1] = np.cos(angle)
        extras[:, 2] = np.asarray(interaction_progress) / 10.0
    else:
        extras[:, 0], extras[:, 1], extras[:, 2] = 0.0, 1.0, 0.0
    extras[:, 3] = np.minimum(np.maximum(np.asarray(step_counts) / agent_lifespan, 0.0), 1.0)
    return extras


def encode_full_observation(
    layout: np.ndarray, positions: np.ndarray, meters: np.ndarray, extras: np.ndarray
) -> np.ndarray:
    """``[N, g*g + 27]``: grid (1.0 per deployed affordance, +1.0 on the agent's cell; flat index y*g + x),
    meters, affordance one-hot, extras."""
    n, g, _ = layout.shape
    grid = (layout != NO_AFFORDANCE).reshape(n, g * g).astype(np.float32)
    grid[np.arange(n), positions[:, 1] * g + positions[:, 0]] += 1.0
    one_hot = affordance_one_hot(affordance_under_agents(layout, positions))
    return np.concatenate([grid, meters.astype(np.float32), one_hot, extras], axis=1)


def encode_partial_observation(
    layout: np.ndarray,
    positions: np.ndarray,
    meters: np.ndarray,
    extras: np.ndarray,
    vision_range: int,
) -> np.ndarray:
    """``[N, (2r+1)^2 + 2 + 27]``: egocentric window, position (x, y) / (g - 1), meters, one-hot, extras.

    The window is row-major with dy outer (-r..r) and dx inner; a cell is 1.0 if a deployed affordance is
    there, 0.0 if empty or off the grid; the agent itself is not marked.
    """
    n, g, _ = layout.shape
    r = vision_range
    padded = np.zeros((n, g + 2 * r, g + 2 * r), dtype=bool)
    padded[:, r : r + g, r : r + g] = layout != NO_AFFORDANCE
    # windows[n, y, x] is the [2r+1, 2r+1] view centred on cell (x, y) (padded cell (x + r, y + r)).
    windows = sliding_window_view(padded, (2 * r + 1, 2 * r + 1), axis=(1, 2))
    window = windows[np.arange(n), positions[:, 1], positions[:, 0]]
    position = positions.astype(np.float32) / np.float32(g - 1)
    one_hot = affordance_one_hot(affordance_under_agents(layout, positions))
    return np.concatenate(
        [window.reshape(n, (2 * r + 1) ** 2).astype(np.float32), position, meters.astype(np.float32), one_hot, extras],
        axis=1,
    )
