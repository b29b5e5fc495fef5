"""What one observation shows, decoded back into what the watch page draws (pure functions, one tracker).

A watched session sends observations only (``docs/HAMLET_FORMATS.md``, ``townlet.env.observation``):

- full observability (L0, L1): ``[grid g*g | meters 8 | affordance one-hot 15 | extras 4]``. The grid holds
  1.0 per affordance cell plus 1.0 on the agent's cell; affordance *types* are not in it.
- partial observability (L2, L3): ``[window (2r+1)^2 | position 2 | meters 8 | one-hot 15 | extras 4]``,
  the window row-major with ``dy`` outer, 1.0 where an affordance is; position is ``(x, y) / (g - 1)``.
- extras: ``sin(2 pi t / 24), cos(2 pi t / 24), progress / 10, step_count / lifespan`` (the first three are
  ``0, 1, 0`` on levels without a clock).

One full-grid observation cannot always say where the agent is: on an empty cell it is one more 1.0 among
the affordances'. `FullGridTracker` resolves it over the frames of an episode (affordances stay put; the
agent moves), or at once from the layout the model trained on when the grid agrees with it. It also learns
the type of each affordance the agent stands on (the one-hot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from townlet.env import AFFORDANCE_NAMES, NO_AFFORDANCE, NUM_METERS, LevelConfig, compute_action_masks

__all__ = ["Cell", "FullGridTracker", "ObservedEnv", "action_mask", "decode_partial", "observed_json"]

Cell = tuple[int, int]
"""``(x, y)`` on the grid."""

_ONE_HOT = NO_AFFORDANCE + 1
_EXTRAS = 4


@dataclass(frozen=True)
class ObservedEnv:
    """What an observation shows of one environment."""

    grid_size: int
    region: tuple[int, int, int, int]
    """``(x0, y0, x1, y1)``, end exclusive: the cells the observation covers (the whole grid, or the window
    clipped at the border)."""
    affordances: frozenset[Cell]
    """Cells of ``region`` holding an affordance."""
    names: Mapping[Cell, str]
    """Types known for some of those cells (the one under the agent; more once learned or from the layout)."""
    position: Cell | None
    """The agent's cell; None when one full-grid frame cannot tell (see ``candidates``)."""
    candidates: frozenset[Cell]
    """Where the agent may be when ``position`` is None (else empty)."""
    affordance_here: str | None
    meters: npt.NDArray[np.float32]
    """``[8]`` in observation order."""
    step: int
    """Steps taken this episode (exact below the agent lifespan)."""
    time_of_day: int | None
    """Hour 0..23 on levels with a clock, else None."""
    progress: int | None
    """Ticks done on the interaction in progress, on levels with a clock, else None."""


def _shared(row: npt.NDArray[np.float32], start: int, level: LevelConfig) -> dict[str, Any]:
    """Decode ``[meters | one-hot | extras]`` starting at ``start``."""
    meters = np.array(row[start : start + NUM_METERS], dtype=np.float32)
    one_hot = row[start + NUM_METERS : start + NUM_METERS + _ONE_HOT]
    here = int(np.argmax(one_hot))
    extras = row[start + NUM_METERS + _ONE_HOT :]
    time_of_day = progress = None
    if level.temporal_mechanics:
        angle = math.atan2(float(extras[0]), float(extras[1]))
        time_of_day = round(angle * 24.0 / (2.0 * math.pi)) % 24
        progress = round(float(extras[2]) * 10.0)
    return {
        "meters": meters,
        "affordance_here": AFFORDANCE_NAMES[here] if here != NO_AFFORDANCE and one_hot[here] > 0.5 else None,
        "step": round(float(extras[3]) * level.agent_lifespan),
        "time_of_day": time_of_day,
        "progress": progress,
    }


def _check_row(row: npt.ArrayLike, level: LevelConfig) -> npt.NDArray[np.float32]:
    array = np.asarray(row, dtype=np.float32)
    if array.shape != (level.obs_dim,):
        raise ValueError(
            f"an observation of level {level.name} is [{level.obs_dim}] floats, got shape {list(array.shape)}; "
            "pass one row of the frame's observations"
        )
    return array


def decode_partial(row: npt.ArrayLike, level: LevelConfig, layout: Mapping[str, Cell] | None = None) -> ObservedEnv:
    """One partial-observability observation (L2, L3) ``[obs_dim]``: the window placed on the grid.

    ``layout`` (``{affordance: (x, y)}``, the one the model trained on, if known) names the window's cells
    when the window agrees with it; otherwise only the type under the agent is known."""
    if not level.partial_observability:
        raise ValueError(f"level {level.name} is fully observed; use FullGridTracker")
    obs = _check_row(row, level)
    g, r, w = level.grid_size, level.vision_range, level.window_size
    x, y = (round(float(v) * (g - 1)) for v in obs[w * w : w * w + 2])
    window = obs[: w * w].reshape(w, w) > 0.5  # [dy, dx]
    affordances = frozenset(
        (x + int(dx) - r, y + int(dy) - r) for dy, dx in zip(*np.nonzero(window), strict=True)
    )  # off-grid cells are 0: never in here
    shared = _shared(obs, w * w + 2, level)
    region = (max(0, x - r), max(0, y - r), min(g, x + r + 1), min(g, y + r + 1))
    names: dict[Cell, str] = {}
    if layout:
        placed = {(int(p[0]), int(p[1])): name for name, p in layout.items()}
        inside = {c: n for c, n in placed.items() if region[0] <= c[0] < region[2] and region[1] <= c[1] < region[3]}
        if set(inside) == affordances:
            names.update(inside)
    if shared["affordance_here"]:
        names[(x, y)] = shared["affordance_here"]
    return ObservedEnv(
        grid_size=g,
        region=region,
        affordances=affordances,
        names=names,
        position=(x, y),
        candidates=frozenset(),
        **shared,
    )


class FullGridTracker:
    """Decodes the full-grid observations (L0, L1) of one environment, frame after frame.

    Args:
        level: the level the observations come from.
        layout: ``{affordance: (x, y)}`` the model trained on, if known; used while the grid agrees with it.

    `update` takes the frames in order (some may be missing: a watcher drops frames) with ``reset`` True on
    the first frame of an episode. The affordance cells of an episode are those marked in every frame of it
    so far; the agent is the one marked cell outside them. A frame whose grid no longer holds every known
    affordance starts over (a new layout whose reset frame was missed).
    """

    def __init__(self, level: LevelConfig, layout: Mapping[str, Cell] | None = None) -> None:
        if level.partial_observability:
            raise ValueError(f"level {level.name} is partially observed; use decode_partial")
        self.level = level
        self._layout = {(int(pos[0]), int(pos[1])): name for name, pos in (layout or {}).items()}
        self._steady: frozenset[Cell] | None = None  # marked in every frame of this episode so far
        self._names: dict[Cell, str] = {}

    def update(self, row: npt.ArrayLike, reset: bool = False) -> ObservedEnv:
        """Decode one observation ``[obs_dim]``; ``reset``: it is the first of an episode."""
        obs = _check_row(row, self.level)
        g = self.level.grid_size
        grid = obs[: g * g].reshape(g, g)  # [y, x]
        marked = frozenset((int(x), int(y)) for y, x in zip(*np.nonzero(grid > 0.5), strict=True))
        doubled = [(int(x), int(y)) for y, x in zip(*np.nonzero(grid > 1.5), strict=True)]
        if reset or (self._steady is not None and not self._steady <= marked):
            self._steady = None
        if not set(self._names) <= marked:
            self._names.clear()
        steady = marked if self._steady is None else self._steady & marked
        self._steady = steady
        shared = _shared(obs, g * g, self.level)

        position, affordances, candidates = self._locate(marked, doubled, steady)
        if position is not None and shared["affordance_here"]:
            self._names[position] = shared["affordance_here"]
        names = {cell: name for cell, name in self._layout.items() if cell in affordances}
        names.update({cell: name for cell, name in self._names.items() if cell in affordances})
        return ObservedEnv(
            grid_size=g,
            region=(0, 0, g, g),
            affordances=affordances,
            names=names,
            position=position,
            candidates=candidates,
            **shared,
        )

    def _locate(
        self, marked: frozenset[Cell], doubled: list[Cell], steady: frozenset[Cell]
    ) -> tuple[Cell | None, frozenset[Cell], frozenset[Cell]]:
        """``(position, affordances, candidates)`` of one grid."""
        if doubled:  # on an affordance: every marked cell is one
            return doubled[0], marked, frozenset()
        known = frozenset(self._layout) if self._layout_fits(marked) else steady
        outside = marked - known
        if len(outside) == 1:
            return next(iter(outside)), marked - outside, frozenset()
        # not seen to move yet this episode: any marked cell may be the agent's
        return None, frozenset(), marked

    def _layout_fits(self, marked: frozenset[Cell]) -> bool:
        """The trained layout explains this grid: its cells plus one (the agent's) are the marked ones."""
        cells = frozenset(self._layout)
        return bool(cells) and cells <= marked and len(marked - cells) == 1


def action_mask(seen: ObservedEnv, level: LevelConfig) -> npt.NDArray[np.bool_]:
    """``[6]`` the actions `townlet.env` allows in the state ``seen`` shows (moves off the grid and INTERACT
    with nothing open underfoot masked); every action while the agent's cell is unknown. The watched
    simulator may mask differently: the page says this mask is inferred."""
    if seen.position is None:
        return np.ones(6, dtype=bool)
    here = AFFORDANCE_NAMES.index(seen.affordance_here) if seen.affordance_here else NO_AFFORDANCE
    hour = np.array([seen.time_of_day]) if level.temporal_mechanics and seen.time_of_day is not None else None
    mask: npt.NDArray[np.bool_] = compute_action_masks(
        np.array([seen.position]), np.array([here]), seen.grid_size, np.zeros(1, dtype=bool), hour
    )[0]
    return mask


def observed_json(seen: ObservedEnv) -> dict[str, Any]:
    """The part of a watch frame's env that the page draws from the observation."""
    return {
        "region": [int(v) for v in seen.region],
        "cells": [
            {"x": x, "y": y, "name": seen.names.get((x, y))} for x, y in sorted(seen.affordances, key=lambda c: c[::-1])
        ],
        "position": list(seen.position) if seen.position is not None else None,
        "candidates": [list(cell) for cell in sorted(seen.candidates, key=lambda c: c[::-1])],
        "affordance_here": seen.affordance_here,
        "meters": [round(float(v), 4) for v in seen.meters],
        "step": seen.step,
        "time_of_day": seen.time_of_day,
        "progress": seen.progress,
    }
