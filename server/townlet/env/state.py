"""``EnvState``: everything that evolves in a batch of envs, how to build one by hand, and how it is checked.

Researchers reproduce situations by setting a state: :meth:`EnvState.build` makes one from positions, a
layout and (optionally) meters, with every other field at its start-of-episode value, and
:func:`validate_state` (run by ``VectorTownletEnv.set_state``) rejects a state the simulator could never
reach, naming the field, what was expected and what arrived.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from townlet.env.affordances import AFFORDANCE_NAMES, NO_AFFORDANCE
from townlet.env.config import LevelConfig, get_level
from townlet.env.errors import InvalidStateError, LevelConfigError
from townlet.env.layout import layout_from_positions
from townlet.env.meters import METER_DTYPE, METER_INITIAL, METER_NAMES, MONEY, NUM_METERS

__all__ = ["EnvState", "initial_meters", "validate_state"]


@dataclass(frozen=True)
class EnvState:
    """Everything that evolves in a batch of ``N`` envs. Arrays are never modified in place."""

    layouts: np.ndarray  # [N, g, g] int, vocabulary index per cell (NO_AFFORDANCE = empty)
    positions: np.ndarray  # [N, 2] int (x, y)
    meters: np.ndarray  # [N, 8] float32 in [0, 1] (Hamlet's dtype: rounding and price checks match)
    step_counts: np.ndarray  # [N] int, steps taken this episode
    time_of_day: np.ndarray  # [N] int in 0..23
    interaction_progress: np.ndarray  # [N] int, ticks done on the interaction in progress
    interaction_target: np.ndarray  # [N] int, its affordance (NO_AFFORDANCE if none)
    dead: np.ndarray  # [N] bool, health or energy reached 0
    retired: np.ndarray  # [N] bool, reached the agent lifespan
    truncated: np.ndarray  # [N] bool, reached max_steps_per_episode alive

    @property
    def done(self) -> np.ndarray:
        """``[N]`` bool: the episode ended for good (death or retirement)."""
        done: np.ndarray = self.dead | self.retired
        return done

    @property
    def finished(self) -> np.ndarray:
        """``[N]`` bool: done or truncated; such an env is frozen until it is reset."""
        finished: np.ndarray = self.dead | self.retired | self.truncated
        return finished

    def copy(self) -> EnvState:
        return EnvState(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})

    @classmethod
    def build(
        cls,
        level: str | LevelConfig,
        positions: Sequence[Sequence[int]] | np.ndarray,
        layout: Mapping[str, Sequence[int]] | np.ndarray,
        meters: Mapping[str, float] | Sequence[float] | np.ndarray | None = None,
        **fields: Any,
    ) -> EnvState:
        """A state of ``N = len(positions)`` envs at the start of an episode, except what is given.

        Args:
            level: the level (or its name) the state is for.
            positions: ``[N, 2]`` (x, y) cells, or one ``(x, y)`` for a single env.
            layout: ``{affordance: (x, y)}`` for the level's deployed affordances (e.g.
                ``env.affordance_positions()``), shared by all envs; or a ``[g, g]`` / ``[N, g, g]`` layout array.
            meters: ``[N, 8]`` or ``[8]`` values in :data:`~townlet.env.meters.METER_NAMES` order, or
                ``{meter name: value}`` overriding the level's starting meters; None = the starting meters.
            fields: any other :class:`EnvState` field (``time_of_day``, ``step_counts``, ...), a scalar for
                every env or an ``[N]`` array; unspecified ones are 0, ``NO_AFFORDANCE`` or False.

        Raises:
            InvalidStateError: a value the simulator could never reach (see :func:`validate_state`).

        Example::

            state = EnvState.build("L1", [(3, 4)], env.affordance_positions(), {"energy": 0.1, "money": 0.06})
            env.set_state(state)
        """
        lvl = get_level(level)
        xy = np.asarray(positions, dtype=np.int64)
        if xy.ndim == 1:
            xy = xy[None, :]
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) == 0:
            raise InvalidStateError(
                "positions", "[N, 2] (x, y) cells or one (x, y) pair", f"shape {np.shape(positions)}"
            )
        n = len(xy)
        allowed = {f.name for f in dataclasses.fields(cls)} - {"positions", "layouts", "meters"}
        unknown = set(fields) - allowed
        if unknown:
            raise InvalidStateError("fields", f"names from {sorted(allowed)}", f"{sorted(unknown)}")
        values: dict[str, Any] = {
            "layouts": _layouts(lvl, layout, n),
            "positions": xy,
            "meters": _meters(lvl, meters, n),
            "step_counts": 0,
            "time_of_day": 0,
            "interaction_progress": 0,
            "interaction_target": NO_AFFORDANCE,
            "dead": False,
            "retired": False,
            "truncated": False,
            **fields,
        }
        for name, value in values.items():
            if np.ndim(value) == 0:
                values[name] = np.full(n, value)
        state = cls(**values)
        return validate_state(lvl, state, n)


def initial_meters(level: LevelConfig, count: int) -> np.ndarray:
    """``[count, 8]`` float32 starting meters of ``level``."""
    meters = np.tile(METER_INITIAL, (count, 1))
    meters[:, MONEY] = level.initial_money
    return meters


def _meters(level: LevelConfig, meters: Mapping[str, float] | Sequence[float] | np.ndarray | None, n: int) -> Any:
    start = initial_meters(level, n)
    if meters is None:
        return start
    if isinstance(meters, Mapping):
        unknown = set(meters) - set(METER_NAMES)
        if unknown:
            raise InvalidStateError("meters", f"names from {METER_NAMES}", f"{sorted(unknown)}")
        for name, value in meters.items():
            start[:, METER_NAMES.index(name)] = value
        return start
    array = np.asarray(meters, dtype=METER_DTYPE)
    return np.broadcast_to(array, (n, NUM_METERS)) if array.shape == (NUM_METERS,) else array


def _layouts(level: LevelConfig, layout: Mapping[str, Sequence[int]] | np.ndarray, n: int) -> np.ndarray:
    g = level.grid_size
    if isinstance(layout, Mapping):
        try:
            grid = layout_from_positions(layout, g, level.enabled_affordances)
        except LevelConfigError as exc:
            got = f"{ {name: tuple(cell) for name, cell in layout.items()} }"
            raise InvalidStateError("layouts", f"one distinct cell per {level.name} affordance ({exc})", got) from exc
        return np.broadcast_to(grid, (n, g, g))
    array = np.asarray(layout)
    if array.shape == (g, g):
        return np.broadcast_to(array, (n, g, g))
    return array


_DTYPES = {"meters": METER_DTYPE, "dead": np.bool_, "retired": np.bool_, "truncated": np.bool_}


def validate_state(level: LevelConfig, state: EnvState, num_envs: int) -> EnvState:
    """A canonical-dtype copy of ``state`` for ``num_envs`` envs of ``level``, or :class:`InvalidStateError`.

    Checked: every field's shape; meters finite and in [0, 1]; positions on the grid; ``time_of_day`` in
    0..23; step counts and interaction progress non-negative; ``interaction_target`` a known affordance
    index (or ``NO_AFFORDANCE``); and every layout holds exactly the level's deployed affordances, one cell
    each, and nothing else.
    """
    n, g = num_envs, level.grid_size
    shapes = {"layouts": (n, g, g), "positions": (n, 2), "meters": (n, NUM_METERS)}
    fields: dict[str, np.ndarray] = {}
    for spec in dataclasses.fields(EnvState):
        value = getattr(state, spec.name)
        want = shapes.get(spec.name, (n,))
        if np.shape(value) != want:
            raise InvalidStateError(
                spec.name, f"shape {want} for {n} env(s) of {level.name}", f"shape {np.shape(value)}"
            )
        array = np.array(value)
        if spec.name not in _DTYPES and array.size and array.dtype.kind not in "iub":
            raise InvalidStateError(spec.name, "integers", f"dtype {array.dtype}")
        fields[spec.name] = array.astype(_DTYPES.get(spec.name, np.int64))
    _check_values(level, fields)
    return EnvState(**fields)


def _first_bad(mask: Any) -> tuple[int, ...]:
    """Index of the first True in a bool array (which has at least one)."""
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _check_values(level: LevelConfig, f: dict[str, np.ndarray]) -> None:
    g = level.grid_size
    meters = f["meters"]
    bad = ~np.isfinite(meters) | (meters < 0) | (meters > 1)
    if bad.any():
        env, meter = _first_bad(bad)
        raise InvalidStateError(
            "meters", "finite values in [0, 1]", f"{meters[env, meter]} for {METER_NAMES[meter]} of env {env}"
        )
    positions = f["positions"]
    if ((positions < 0) | (positions >= g)).any():
        env = _first_bad(((positions < 0) | (positions >= g)).any(axis=1))[0]
        raise InvalidStateError(
            "positions", f"(x, y) in [0, {g}) on the {g}x{g} grid", f"{tuple(positions[env])} for env {env}"
        )
    for name, low, high in (("time_of_day", 0, 23), ("step_counts", 0, None), ("interaction_progress", 0, None)):
        values = f[name]
        out = (values < low) | (values > high) if high is not None else values < low
        if out.any():
            env = _first_bad(out)[0]
            want = f"an hour in {low}..{high}" if high is not None else f"values >= {low}"
            raise InvalidStateError(name, want, f"{values[env]} for env {env}")
    target = f["interaction_target"]
    if ((target < 0) | (target > NO_AFFORDANCE)).any():
        env = _first_bad((target < 0) | (target > NO_AFFORDANCE))[0]
        raise InvalidStateError(
            "interaction_target",
            f"an affordance index in 0..{NO_AFFORDANCE - 1} or {NO_AFFORDANCE} (none)",
            f"{target[env]} for env {env}",
        )
    _check_layouts(level, f["layouts"])


def _check_layouts(level: LevelConfig, layouts: np.ndarray) -> None:
    expected = np.zeros(NO_AFFORDANCE + 1, dtype=np.int64)
    expected[list(level.affordance_ids)] = 1
    flat = layouts.reshape(len(layouts), -1)
    if ((flat < 0) | (flat > NO_AFFORDANCE)).any():
        env = _first_bad(((flat < 0) | (flat > NO_AFFORDANCE)).any(axis=1))[0]
        raise InvalidStateError(
            "layouts",
            f"affordance indices in 0..{NO_AFFORDANCE} ({NO_AFFORDANCE} = empty)",
            f"{sorted(set(flat[env].tolist()))} in env {env}",
        )
    counts = (flat[:, :, None] == np.arange(NO_AFFORDANCE)).sum(axis=1)  # [N, 14] cells per affordance
    wrong = (counts != expected[:NO_AFFORDANCE]).any(axis=1)
    if wrong.any():
        env = _first_bad(wrong)[0]
        got = [AFFORDANCE_NAMES[i] + (f" x{c}" if c > 1 else "") for i, c in enumerate(counts[env]) if c]
        raise InvalidStateError(
            "layouts",
            f"each of {level.name}'s affordances {list(level.enabled_affordances)} on exactly one cell",
            f"{got} in env {env}",
        )
