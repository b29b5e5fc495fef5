"""``VectorTownletEnv``: N independent Townlet agents stepped together in numpy.

The world rules are the pure functions of ``actions``, ``interactions``, ``dynamics`` and ``observation``;
:func:`transition` chains them into one step over an explicit :class:`EnvState`, and
:class:`VectorTownletEnv` is the thin stateful shell that owns the state and the random generator.

Layouts: by default all envs share ONE layout drawn from the seed at construction (as in Hamlet
training); it changes only when ``reset(seed=...)`` reseeds. With ``relayout_each_reset=True`` every env
draws its own layout each time it is reset (``reset`` redraws all, ``reset_envs`` only the chosen ones),
so envs in a batch then have different layouts. A fixed ``layout={name: (x, y)}`` can be given instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from townlet.env.actions import ACTION_DIM, Action, apply_movement, compute_action_masks
from townlet.env.affordances import NO_AFFORDANCE
from townlet.env.config import LevelConfig, get_level
from townlet.env.dynamics import (
    action_cost_table,
    apply_action_costs,
    apply_base_depletion,
    apply_cascades,
    apply_fitness_modulation,
    compute_reward,
    terminal_mask,
)
from townlet.env.errors import InvalidActionError, LevelConfigError, StateError
from townlet.env.interactions import apply_instant_interactions, apply_multi_tick_interactions, cancel_progress
from townlet.env.layout import draw_layouts, layout_from_positions, layout_positions
from townlet.env.observation import (
    affordance_under_agents,
    encode_extras,
    encode_full_observation,
    encode_partial_observation,
)
from townlet.env.state import EnvState, initial_meters, validate_state

__all__ = ["EnvState", "Transition", "VectorTownletEnv", "initial_meters", "training_layout", "transition"]


class Transition(NamedTuple):
    """What :func:`transition` returns."""

    state: EnvState
    reward: np.ndarray  # [N] float32
    interactions: np.ndarray  # [N] int, affordance used this step, -1 if none
    active: np.ndarray  # [N] bool, the env was stepped (it was not finished before the step)


def transition(
    level: LevelConfig,
    state: EnvState,
    actions: np.ndarray,
    depletion_multiplier: float,
    cost_table: np.ndarray,
) -> Transition:
    """One step of every env (finished envs stay frozen and get reward 0).

    Order: movement, action costs, INTERACT, base depletion x multiplier, fitness -> health modulation,
    cascades, terminal check, step count / retirement / truncation, reward, clock tick.

    Args:
        actions: ``[N]`` int in ``0..5`` (already validated).
        cost_table: ``[6, 8]`` from :func:`townlet.env.dynamics.action_cost_table`.
    """
    active = ~state.finished
    actions = np.where(active, actions, Action.WAIT)
    positions = apply_movement(state.positions, actions, level.grid_size)
    meters = apply_action_costs(state.meters, actions, cost_table)
    here = affordance_under_agents(state.layouts, positions)
    interacting = active & (actions == Action.INTERACT)
    progress, target = state.interaction_progress, state.interaction_target
    if level.temporal_mechanics:
        moved = np.any(positions != state.positions, axis=1)
        progress, target = cancel_progress(progress, target, moved)
        ticked = apply_multi_tick_interactions(meters, here, interacting, state.time_of_day, progress, target)
        meters, progress, target, success = ticked.meters, ticked.progress, ticked.target, ticked.success
    else:
        meters, success = apply_instant_interactions(meters, here, interacting)
    meters = apply_base_depletion(meters, depletion_multiplier)
    meters = apply_fitness_modulation(meters)
    meters = apply_cascades(meters)

    died = active & terminal_mask(meters)
    step_counts = state.step_counts + active
    # Hamlet retires (and pays the bonus to) an agent reaching its lifespan even if it died on that step.
    retired = active & (step_counts >= level.agent_lifespan)
    truncated = active & ~died & ~retired & (step_counts >= level.max_steps_per_episode)
    reward = np.where(active, compute_reward(meters, died, retired), np.float32(0.0))

    keep = active[:, None]
    new_state = EnvState(
        layouts=state.layouts,
        positions=np.where(keep, positions, state.positions),
        meters=np.where(keep, meters, state.meters),
        step_counts=step_counts,
        time_of_day=np.where(active, (state.time_of_day + 1) % 24, state.time_of_day),
        interaction_progress=np.where(active, progress, state.interaction_progress),
        interaction_target=np.where(active, target, state.interaction_target),
        dead=state.dead | died,
        retired=state.retired | retired,
        truncated=state.truncated | truncated,
    )
    return Transition(new_state, reward.astype(np.float32), np.where(success, here, -1), active)


def _select(state: EnvState, rows: np.ndarray) -> EnvState:
    """The envs of ``state`` picked by ``rows`` (a bool mask or indices)."""
    return EnvState(**{f.name: getattr(state, f.name)[rows] for f in dataclasses.fields(state)})


class VectorTownletEnv:
    """``num_envs`` independent Townlet agents (one per env) on one level, stepped as a batch.

    Args:
        level: a :class:`LevelConfig` or its name (``"L0_0"``, ``"L0_5"``, ``"L1"``, ``"L2"``, ``"L3"``).
        num_envs: batch size ``N``.
        seed: seed of the numpy Generator drawing layouts and start cells; the same seed and actions
            give identical trajectories. None draws fresh entropy.
        relayout_each_reset: redraw each env's layout whenever it is reset (see module docstring).
        depletion_multiplier: curriculum scale of the base depletions (1.0 = full difficulty).
        layout: fixed ``{affordance name: (x, y)}`` for the level's deployed affordances, shared by all envs.

    Envs do not auto-reset: a finished env (dead, retired or truncated) is frozen, reports reward 0 and
    its sticky done / truncated flags, and has every action masked until :meth:`reset_envs`.
    """

    def __init__(
        self,
        level: str | LevelConfig,
        num_envs: int,
        seed: int | None = None,
        relayout_each_reset: bool = False,
        *,
        depletion_multiplier: float = 1.0,
        layout: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self._level = get_level(level)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise LevelConfigError(f"num_envs must be a positive int, got {num_envs!r}")
        if layout is not None and relayout_each_reset:
            raise LevelConfigError(
                "a fixed layout cannot be redrawn: pass either layout=... or relayout_each_reset=True"
            )
        self._num_envs = int(num_envs)
        self._relayout = bool(relayout_each_reset)
        self.depletion_multiplier = depletion_multiplier
        self._cost_table = action_cost_table(
            self._level.move_energy_cost, self._level.wait_energy_cost, self._level.interact_energy_cost
        )
        self._fixed_layout = (
            None
            if layout is None
            else layout_from_positions(layout, self._level.grid_size, self._level.enabled_affordances)
        )
        self._state: EnvState | None = None
        self._last_obs: np.ndarray | None = None  # private copy of the latest observations
        self._seed(seed)

    # --- properties --------------------------------------------------------------------------------

    @property
    def level(self) -> LevelConfig:
        return self._level

    @property
    def num_envs(self) -> int:
        return self._num_envs

    @property
    def obs_dim(self) -> int:
        return self._level.obs_dim

    @property
    def action_dim(self) -> int:
        return ACTION_DIM

    @property
    def depletion_multiplier(self) -> float:
        return self._multiplier

    @depletion_multiplier.setter
    def depletion_multiplier(self, value: float) -> None:
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise LevelConfigError(f"depletion_multiplier must be a finite number >= 0, got {value!r}")
        self._multiplier = float(value)

    # --- episode control ---------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode in every env; with ``seed``, reseed first (and redraw the shared layout
        unless it was given), exactly as a new env built with that seed. Returns obs ``[N, obs_dim]``."""
        if seed is not None:
            self._seed(seed)
        self._state = self._fresh_state(np.ones(self._num_envs, dtype=bool), previous=None)
        return self._remember(self._encode(self._state))

    def reset_envs(self, mask: np.ndarray | Sequence[bool]) -> np.ndarray:
        """Start a new episode only in the envs where ``mask [N] bool`` is True; the others keep their
        state. Returns obs ``[N, obs_dim]`` for all envs."""
        state = self._require_state()
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (self._num_envs,):
            raise StateError(
                f"reset_envs expects a bool mask of shape ({self._num_envs},), got dtype {mask.dtype} "
                f"shape {mask.shape}; e.g. pass the `done | info['truncated']` arrays from step()"
            )
        self._state = self._fresh_state(mask, previous=state)
        if self._last_obs is None:
            return self._remember(self._encode(self._state))
        obs = self._last_obs.copy()
        obs[mask] = self._encode(_select(self._state, mask))  # only the restarted envs are re-encoded
        return self._remember(obs)

    def step(self, actions: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every env by one step.

        Args:
            actions: ``[N]`` ints in ``0..5`` (UP, DOWN, LEFT, RIGHT, INTERACT, WAIT). Masked actions are
                not rejected: a move into the border is clamped (and still costs), an INTERACT with
                nothing to use wastes the step.

        Returns:
            ``(obs [N, obs_dim] float32, reward [N] float32, done [N] bool, info)``. ``done`` means death
            or retirement; ``info["truncated"] [N] bool`` is the time limit (``max_steps_per_episode``).
            Other info keys: ``died``, ``retired`` ([N] bool, sticky like ``done``), ``active`` ([N] bool,
            the env was stepped), ``step_counts``, ``positions`` ([N, 2] x, y), ``time_of_day``,
            ``interaction_progress``, ``successful_interactions`` ([N] affordance index used, -1 if none).
        """
        state = self._require_state()
        result = transition(self._level, state, self._check_actions(actions), self._multiplier, self._cost_table)
        self._state = new = result.state
        info: dict[str, Any] = {
            "truncated": new.truncated.copy(),
            "died": new.dead.copy(),
            "retired": new.retired.copy(),
            "active": result.active,
            "step_counts": new.step_counts.copy(),
            "positions": new.positions.copy(),
            "time_of_day": new.time_of_day.copy(),
            "interaction_progress": new.interaction_progress.copy(),
            "successful_interactions": result.interactions,
        }
        return self._remember(self._encode(new)), result.reward, new.done, info

    # --- queries -----------------------------------------------------------------------------------

    def observe(self) -> np.ndarray:
        """Observations of the current state, ``[N, obs_dim]`` float32."""
        return self._encode(self._require_state())

    def _encode(self, s: EnvState) -> np.ndarray:
        lvl = self._level
        extras = encode_extras(
            s.time_of_day, s.interaction_progress, s.step_counts, lvl.temporal_mechanics, lvl.agent_lifespan
        )
        if lvl.partial_observability:
            return encode_partial_observation(s.layouts, s.positions, s.meters, extras, lvl.vision_range)
        return encode_full_observation(s.layouts, s.positions, s.meters, extras)

    def action_masks(self) -> np.ndarray:
        """``[N, 6]`` bool, True = allowed (see :func:`townlet.env.actions.compute_action_masks`)."""
        s = self._require_state()
        return compute_action_masks(
            s.positions,
            affordance_under_agents(s.layouts, s.positions),
            self._level.grid_size,
            s.finished,
            s.time_of_day if self._level.temporal_mechanics else None,
        )

    def affordance_positions(self, env_index: int = 0) -> dict[str, tuple[int, int]]:
        """``{name: (x, y)}`` of env ``env_index``'s layout (the checkpoint ``affordance_layout`` form)."""
        if not 0 <= env_index < self._num_envs:
            raise StateError(f"env_index must be in [0, {self._num_envs}), got {env_index}")
        layout = self._base_layout if self._state is None else self._state.layouts[env_index]
        return layout_positions(layout)

    def get_state(self) -> EnvState:
        """A copy of the current state (for snapshots, tests and debugging)."""
        return self._require_state().copy()

    def set_state(self, state: EnvState) -> None:
        """Replace the current state by a validated copy of ``state`` in the canonical dtypes.

        Build one by hand with :meth:`EnvState.build` (positions, layout, meters; the rest defaulted) or
        edit a :meth:`get_state` snapshot with ``dataclasses.replace``.

        Raises:
            InvalidStateError: a wrong shape, a NaN or out-of-range meter, an hour outside 0..23, an unknown
                affordance index, a layout that does not hold exactly this level's affordances, ...; the
                message names the field, what was expected and what arrived.
        """
        self._state = validate_state(self._level, state, self._num_envs)
        self._last_obs = None

    # --- internals ---------------------------------------------------------------------------------

    def _seed(self, seed: int | None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
            raise LevelConfigError(f"seed must be a non-negative int or None, got {seed!r}")
        self._rng = np.random.default_rng(seed)
        if self._fixed_layout is not None:
            self._base_layout = self._fixed_layout
        else:
            lvl = self._level
            self._base_layout = draw_layouts(self._rng, lvl.grid_size, lvl.affordance_ids, 1)[0]

    def _fresh_state(self, mask: np.ndarray, previous: EnvState | None) -> EnvState:
        """State where envs in ``mask`` start a new episode and the others keep ``previous``."""
        lvl, k = self._level, int(mask.sum())
        if self._relayout:
            new_layouts = draw_layouts(self._rng, lvl.grid_size, lvl.affordance_ids, k)
        else:
            new_layouts = np.broadcast_to(self._base_layout, (k, lvl.grid_size, lvl.grid_size))
        fresh = {
            "layouts": new_layouts,
            "positions": self._rng.integers(0, lvl.grid_size, size=(k, 2)),
            "meters": initial_meters(lvl, k),
            "step_counts": np.zeros(k, dtype=np.int64),
            "time_of_day": np.zeros(k, dtype=np.int64),
            "interaction_progress": np.zeros(k, dtype=np.int64),
            "interaction_target": np.full(k, NO_AFFORDANCE, dtype=np.int64),
            "dead": np.zeros(k, dtype=bool),
            "retired": np.zeros(k, dtype=bool),
            "truncated": np.zeros(k, dtype=bool),
        }
        fields: dict[str, np.ndarray] = {}
        for name, values in fresh.items():
            if previous is None:
                array = np.array(values)
            else:
                array = getattr(previous, name).copy()
                array[mask] = values
            fields[name] = array
        return EnvState(**fields)

    def _remember(self, obs: np.ndarray) -> np.ndarray:
        self._last_obs = obs.copy()
        return obs

    def _require_state(self) -> EnvState:
        if self._state is None:
            raise StateError("the env has not been reset yet: call reset() before step(), observe() or masks")
        return self._state

    def _check_actions(self, actions: np.ndarray | Sequence[int]) -> np.ndarray:
        array = np.asarray(actions)
        if array.shape != (self._num_envs,):
            raise InvalidActionError(
                f"expected actions of shape ({self._num_envs},) (one per env), got shape {array.shape}"
            )
        if array.dtype.kind not in "iu":
            raise InvalidActionError(
                f"actions must be integers, got dtype {array.dtype}; convert with .astype(np.int64)"
            )
        if array.size and (array.min() < 0 or array.max() >= ACTION_DIM):
            raise InvalidActionError(
                f"actions must lie in 0..{ACTION_DIM - 1} (UP, DOWN, LEFT, RIGHT, INTERACT, WAIT), "
                f"got values in [{array.min()}, {array.max()}]"
            )
        return array.astype(np.int64, copy=False)


def training_layout(level: str | LevelConfig, seed: int) -> dict[str, tuple[int, int]]:
    """``{affordance: (x, y)}``: the layout that ``VectorTownletEnv(level, n, seed=seed)`` shares across its
    envs, hence the fixed layout a ``hamlet-train`` run of ``level`` with ``seed`` trains on.

    It depends on the level and the seed only, so a remote simulator can rebuild it from a model's metadata
    (``level``, ``seed``) with nothing but numpy.
    """
    return VectorTownletEnv(level, 1, seed=seed).affordance_positions()
