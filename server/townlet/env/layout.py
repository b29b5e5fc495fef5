"""Affordance layouts: which cell holds which deployed affordance.

A layout is a ``[g, g]`` int array indexed ``[y, x]`` holding vocabulary indices, ``NO_AFFORDANCE`` where
empty; a batch of layouts is ``[N, g, g]``. Each deployed affordance occupies one distinct cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from townlet.env.affordances import AFFORDANCE_NAMES, NO_AFFORDANCE
from townlet.env.errors import LevelConfigError

__all__ = ["draw_layouts", "layout_from_positions", "layout_positions"]


def draw_layouts(rng: np.random.Generator, grid_size: int, affordance_ids: Sequence[int], count: int) -> np.ndarray:
    """``[count, g, g]`` independent uniformly random layouts, each affordance on a distinct cell."""
    cells = rng.random((count, grid_size * grid_size)).argsort(axis=1)[:, : len(affordance_ids)]
    layouts = np.full((count, grid_size * grid_size), NO_AFFORDANCE, dtype=np.int64)
    layouts[np.arange(count)[:, None], cells] = np.asarray(affordance_ids, dtype=np.int64)
    return layouts.reshape(count, grid_size, grid_size)


def layout_from_positions(positions: Mapping[str, Sequence[int]], grid_size: int, enabled: Sequence[str]) -> np.ndarray:
    """Build a ``[g, g]`` layout from ``{name: (x, y)}`` (the checkpoint's ``affordance_layout.positions``).

    Names must be exactly the deployed affordances ``enabled``; cells must lie on the grid and be distinct.
    """
    if set(positions) != set(enabled):
        raise LevelConfigError(
            f"layout names {sorted(positions)} do not match the level's affordances {sorted(enabled)}; "
            "give one (x, y) per deployed affordance"
        )
    layout = np.full((grid_size, grid_size), NO_AFFORDANCE, dtype=np.int64)
    for name, cell in positions.items():
        x, y = (int(v) for v in cell)
        if not (0 <= x < grid_size and 0 <= y < grid_size):
            raise LevelConfigError(f"{name} at ({x}, {y}) lies off the {grid_size}x{grid_size} grid")
        if layout[y, x] != NO_AFFORDANCE:
            other = AFFORDANCE_NAMES[layout[y, x]]
            raise LevelConfigError(f"{name} and {other} share cell ({x}, {y}); each needs its own cell")
        layout[y, x] = AFFORDANCE_NAMES.index(name)
    return layout


def layout_positions(layout: np.ndarray) -> dict[str, tuple[int, int]]:
    """``{name: (x, y)}`` of a ``[g, g]`` layout, in vocabulary order."""
    ys, xs = np.nonzero(layout != NO_AFFORDANCE)
    found = {AFFORDANCE_NAMES[layout[y, x]]: (int(x), int(y)) for y, x in zip(ys, xs, strict=True)}
    return {name: found[name] for name in AFFORDANCE_NAMES if name in found}
