"""Gymnasium interface: ``TownletEnv`` (one env) and ``TownletVectorEnv`` (a batch), registered as ``Townlet/*``.

    import gymnasium as gym
    import townlet.env.gym  # registers Townlet/L0_0-v0, Townlet/L0_5-v0, Townlet/L1-v0, Townlet/L2-v0, Townlet/L3-v0

    env = gym.make("Townlet/L1-v0")
    obs, info = env.reset(seed=0)
    action = env.action_space.sample(mask=info["action_mask"])
    obs, reward, terminated, truncated, info = env.step(action)

    envs = gym.make_vec("Townlet/L2-v0", num_envs=64, vectorization_mode="vector_entry_point")

Both are thin shells over :class:`~townlet.env.vector_env.VectorTownletEnv` (the vector env steps all envs
in one numpy call). Action masks follow Gymnasium's convention (as in ``Taxi-v3``): ``info["action_mask"]``
is an ``int8`` array, 1 = allowed, ready for ``action_space.sample(mask=...)``; the vector env gives
``[N, 6]`` with the usual ``info["_action_mask"]`` row flags. ``terminated`` is death or retirement,
``truncated`` the level's step limit (500, or 1000 on L0_0); no ``TimeLimit`` wrapper is added. Keyword
arguments of ``gym.make`` / ``gym.make_vec`` are those of ``VectorTownletEnv``: ``depletion_multiplier``
(Hamlet trained at 0.2), ``relayout_each_reset`` and ``layout``. Needs ``gymnasium`` (``pip install
'hamlet-server[gym]'``); the rest of ``townlet.env`` does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from townlet.env.actions import ACTION_DIM, Action
from townlet.env.affordances import AFFORDANCE_NAMES, NO_AFFORDANCE
from townlet.env.config import LEVELS, LevelConfig, get_level
from townlet.env.errors import LevelConfigError
from townlet.env.vector_env import VectorTownletEnv

__all__ = ["ENV_IDS", "TownletEnv", "TownletVectorEnv", "observation_space", "register_envs"]

#: Registered ids by level name.
ENV_IDS: dict[str, str] = {name: f"Townlet/{name}-v0" for name in LEVELS}


def observation_space(level: str | LevelConfig) -> spaces.Box:
    """``Box`` of one observation of ``level`` with per-feature bounds (grid cells 0..2 on full observability,
    sin/cos of the hour -1..1, everything else 0..1)."""
    lvl = get_level(level)
    low = np.zeros(lvl.obs_dim, dtype=np.float32)
    high = np.ones(lvl.obs_dim, dtype=np.float32)
    if not lvl.partial_observability:
        high[: lvl.grid_size**2] = 2.0  # an agent standing on an affordance
    low[-4:-2] = -1.0  # sin, cos of the hour
    return spaces.Box(low, high, dtype=np.float32)


def _masks_int8(masks: np.ndarray) -> np.ndarray:
    """``[N, 6]`` int8 masks; a finished env (everything masked) is given WAIT so every row has a choice."""
    out = masks.astype(np.int8)
    out[~masks.any(axis=1), Action.WAIT] = 1
    return out


class TownletEnv(gymnasium.Env[np.ndarray, np.integer]):
    """One Townlet agent as a ``gymnasium.Env``.

    Args:
        level: level name or :class:`LevelConfig`.
        render_mode: None or ``"ansi"`` (the grid as text: ``@`` the agent, letters the affordances).
        depletion_multiplier, relayout_each_reset, layout: as :class:`VectorTownletEnv`.

    ``reset(seed=s)`` reseeds the layout and start cells (same seed, same episode); ``reset()`` continues
    the generator. Info keys: ``action_mask`` (int8 ``[6]``), ``step_count``, ``position`` (x, y),
    ``successful_interaction`` (affordance name used this step, or None).
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012 (Gymnasium declares it per instance)

    def __init__(
        self,
        level: str | LevelConfig = "L1",
        render_mode: str | None = None,
        *,
        depletion_multiplier: float = 1.0,
        relayout_each_reset: bool = False,
        layout: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise LevelConfigError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self._sim = VectorTownletEnv(
            level, 1, relayout_each_reset=relayout_each_reset, depletion_multiplier=depletion_multiplier, layout=layout
        )
        self.observation_space = observation_space(self._sim.level)
        self.action_space = spaces.Discrete(ACTION_DIM)

    @property
    def simulator(self) -> VectorTownletEnv:
        """The underlying one-env :class:`VectorTownletEnv` (for ``get_state`` / ``set_state``)."""
        return self._sim

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        obs = self._sim.reset(seed=seed)
        return obs[0], self._info(None)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, done, info = self._sim.step(np.array([int(action)]))
        used = int(info["successful_interactions"][0])
        return obs[0], float(reward[0]), bool(done[0]), bool(info["truncated"][0]), self._info(used)

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        state = self._sim.get_state()
        layout, (x, y) = state.layouts[0], state.positions[0]
        rows = []
        for row in range(layout.shape[0]):
            cells = ["." if i == NO_AFFORDANCE else AFFORDANCE_NAMES[i][0] for i in layout[row]]
            if row == y:
                cells[x] = "@"
            rows.append(" ".join(cells))
        meters = " ".join(f"{v:.2f}" for v in state.meters[0])
        return "\n".join([*rows, f"step {state.step_counts[0]}  meters {meters}"]) + "\n"

    def _info(self, used: int | None) -> dict[str, Any]:
        state = self._sim.get_state()
        return {
            "action_mask": _masks_int8(self._sim.action_masks())[0],
            "step_count": int(state.step_counts[0]),
            "position": tuple(int(v) for v in state.positions[0]),
            "successful_interaction": AFFORDANCE_NAMES[used] if used is not None and used >= 0 else None,
        }


class TownletVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """``num_envs`` Townlet agents as a ``gymnasium.vector.VectorEnv``, stepped in one numpy call.

    Autoreset is Gymnasium's default ``NEXT_STEP`` mode: the step after an env terminates or truncates
    resets it (its action is ignored; reward 0, not terminated, not truncated). ``reset(seed=s)`` reseeds
    the whole batch; ``reset(options={"reset_mask": m})`` restarts only the envs where ``m [N]`` is True.
    Info keys, each with its ``_key`` row flags: ``action_mask`` (int8 ``[N, 6]``), ``step_count`` ``[N]``,
    ``successful_interaction`` ``[N]`` (affordance index used this step, -1 if none).
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        level: str | LevelConfig = "L1",
        num_envs: int = 1,
        *,
        depletion_multiplier: float = 1.0,
        relayout_each_reset: bool = False,
        layout: Mapping[str, Sequence[int]] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise LevelConfigError(f"TownletVectorEnv does not render; got render_mode={render_mode!r}")
        self._sim = VectorTownletEnv(
            level,
            num_envs,
            relayout_each_reset=relayout_each_reset,
            depletion_multiplier=depletion_multiplier,
            layout=layout,
        )
        self.num_envs = self._sim.num_envs
        self.render_mode = None
        self.single_observation_space = observation_space(self._sim.level)
        self.single_action_space = spaces.Discrete(ACTION_DIM)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._started = False

    @property
    def simulator(self) -> VectorTownletEnv:
        """The underlying :class:`VectorTownletEnv`."""
        return self._sim

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        mask = None if options is None else options.get("reset_mask")
        if mask is not None and seed is None and self._started:
            mask = np.asarray(mask)
            obs = self._sim.reset_envs(mask)
            self._autoreset &= ~mask
        else:
            obs = self._sim.reset(seed=seed)
            self._autoreset[:] = False
            self._started = True
        return obs, self._info(self._sim.get_state().step_counts, np.full(self.num_envs, -1))

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        restart = self._autoreset.copy()
        obs, reward, done, info = self._sim.step(np.asarray(actions))
        terminated, truncated = done.copy(), info["truncated"].copy()
        used, steps = info["successful_interactions"].copy(), info["step_counts"]
        if restart.any():
            obs = self._sim.reset_envs(restart)
            terminated[restart] = truncated[restart] = False
            used[restart], steps[restart] = -1, 0
        self._autoreset = terminated | truncated
        return obs, reward, terminated, truncated, self._info(steps, used)

    def _info(self, steps: np.ndarray, used: np.ndarray) -> dict[str, Any]:
        rows = np.ones(self.num_envs, dtype=bool)
        return {
            "action_mask": _masks_int8(self._sim.action_masks()),
            "_action_mask": rows,
            "step_count": steps,
            "_step_count": rows.copy(),
            "successful_interaction": used,
            "_successful_interaction": rows.copy(),
        }


def register_envs() -> None:
    """Register ``Townlet/<level>-v0`` for every level (idempotent; done on import of this module)."""
    for name, env_id in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point="townlet.env.gym:TownletEnv",
                vector_entry_point="townlet.env.gym:TownletVectorEnv",
                kwargs={"level": name},
            )


register_envs()
