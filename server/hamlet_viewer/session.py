"""`ViewerSession`: one page's simulation: the Townlet envs, the model's episode stream, and the
bookkeeping the page shows (step, reward so far, episodes, survival against the random baseline).

Synchronous and single-threaded by contract (the app calls it from one worker at a time). Every `step`
makes exactly one decision for all envs, applies it, and returns exactly one ``frame`` message.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hamlet_viewer import frames
from hamlet_viewer.baseline import random_survival, select_env
from hamlet_viewer.brains import Brain, ModelEntry, PolicyStream
from hamlet_viewer.errors import StreamLostError, ViewerConfigError
from hamlet_viewer.world import choose_level, compatible_levels, trained_layout
from townlet.env import LevelConfig, VectorTownletEnv

__all__ = ["MAX_ENVS", "SessionSettings", "ViewerSession"]

logger = logging.getLogger(__name__)

MAX_ENVS = 16
_FOLLOW_CHECK_SECONDS = 2.0
_LAYOUT_MODES = ("trained", "random")


@dataclass(frozen=True)
class SessionSettings:
    """What the page is looking at. Every field can be changed from the page (`ViewerSession.configure`)."""

    model: str | None = None
    """Model name; None = the source's default model."""
    version: int | None = None
    """Model version; None = the latest when the stream opens."""
    level: str | None = None
    """Level name; None = the level the model was trained on (metadata), else the first that fits."""
    num_envs: int = 1
    epsilon: float = 0.0
    seed: int | None = 0
    """Seed of the layouts, start cells and exploration; None = fresh entropy."""
    follow_latest: bool = False
    """Switch to a newer version of the model as soon as one appears (checked at episode ends)."""
    layout: str = "trained"
    """``trained``: the layout the model trained on when its metadata says (else one drawn from the
    seed), shared by every env; ``random``: each env draws a new layout every episode."""
    baseline_episodes: int = 8
    """Random-policy episodes played from each episode's start state to measure the baseline."""

    def checked(self) -> SessionSettings:
        """Self, or a `ViewerConfigError` naming the field that does not fit."""
        if not 1 <= self.num_envs <= MAX_ENVS:
            raise ViewerConfigError(f"envs must be in [1, {MAX_ENVS}], got {self.num_envs}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ViewerConfigError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.layout not in _LAYOUT_MODES:
            raise ViewerConfigError(f"layout must be one of {_LAYOUT_MODES}, got {self.layout!r}")
        if self.seed is not None and self.seed < 0:
            raise ViewerConfigError(f"seed must be >= 0, got {self.seed}")
        if self.baseline_episodes < 1:
            raise ViewerConfigError(f"baseline episodes must be >= 1, got {self.baseline_episodes}")
        return self


class ViewerSession:
    """The envs and the episode stream behind one page. Call `start` first, `close` at the end."""

    def __init__(self, brain: Brain, settings: SessionSettings) -> None:
        self.brain = brain
        self.settings = settings.checked()
        self.tick = 0
        self.history: list[frames.SurvivalRecord] = []
        self._next_episode = 0
        self._stream: PolicyStream | None = None
        self._models: list[ModelEntry] = []
        self._last_follow_check = 0.0
        self._rng = np.random.default_rng(settings.seed)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> dict[str, Any]:
        """Open the stream and the envs for the current settings; returns the ``session`` message."""
        self._models = self.brain.models()
        if not self._models:
            raise ViewerConfigError(f"{self.brain.label} serves no models")
        entry = self._entry(self.settings.model)
        if self.settings.version is not None and self.settings.version not in entry.versions:
            raise ViewerConfigError(f"version {self.settings.version} of {entry.name}: have {list(entry.versions)}")
        meta = self.brain.metadata(entry.name, self.settings.version)
        level = choose_level(entry.obs_dim, self.settings.level, meta)
        layout = trained_layout(meta, level) if self.settings.layout == "trained" else None
        stream = self.brain.open(entry.name, self.settings.version, self.settings.num_envs, self.settings.seed)
        self._close_stream()
        self._stream, self._entry_now, self._level = stream, entry, level
        self._layout_source = "random" if self.settings.layout == "random" else ("trained" if layout else "seed")
        self._env = VectorTownletEnv(
            level,
            self.settings.num_envs,
            seed=self.settings.seed,
            relayout_each_reset=self.settings.layout == "random",
            layout=layout,
        )
        self.settings = dataclasses.replace(self.settings, model=entry.name, level=level.name)
        self._new_episodes()
        return self.session_message()

    def close(self) -> None:
        self._close_stream()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _entry(self, name: str | None) -> ModelEntry:
        if name is None:
            return self._models[0]
        for entry in self._models:
            if entry.name == name:
                return entry
        raise ViewerConfigError(
            f"model {name!r}: not served by {self.brain.label}; have {[m.name for m in self._models]}"
        )

    def _new_episodes(self) -> None:
        """Every env starts a new episode now (unfinished ones are dropped from the survival history)."""
        n = self.settings.num_envs
        self._obs = self._env.reset()
        self._episodes = np.arange(self._next_episode, self._next_episode + n)
        self._next_episode += n
        self._returns = np.zeros(n)
        self._starting = np.ones(n, dtype=bool)  # the next step tells the stream these envs restart
        self._pending_reset = np.zeros(n, dtype=bool)
        state = self._env.get_state()
        self._starts = [select_env(state, i) for i in range(n)]  # each env's episode start, for the baseline
        self._layouts_sent: set[int] = set()

    def new_episode(self) -> dict[str, Any]:
        """Restart every env; returns the ``session`` message (it carries the fresh envs)."""
        self._new_episodes()
        return self.session_message()

    # ------------------------------------------------------------------ settings

    def configure(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply changes from the page (keys: the `SessionSettings` fields). Model, version, level, envs,
        seed or layout restart the session; epsilon and follow_latest apply from the next step."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(SessionSettings)}
        if unknown:
            raise ViewerConfigError(f"unknown settings {sorted(unknown)}")
        updated = dataclasses.replace(self.settings, **changes).checked()
        if changes.get("version") is not None and "follow_latest" not in changes:
            updated = dataclasses.replace(updated, follow_latest=False)  # pinning a version stops following
        if "model" in changes and changes["model"] != self.settings.model:
            if "version" not in changes:
                updated = dataclasses.replace(updated, version=None)
            if "level" not in changes:
                updated = dataclasses.replace(updated, level=None)
        restart = any(
            getattr(updated, name) != getattr(self.settings, name)
            for name in ("model", "version", "level", "num_envs", "seed", "layout")
        )
        previous = self.settings
        self.settings = updated
        if restart:
            try:
                return self.start()
            except Exception:
                self.settings = previous
                raise
        if updated.follow_latest and not previous.follow_latest:
            self._last_follow_check = 0.0
            if self._follow_latest():
                return self.session_message()
        return self.session_message()

    def _follow_latest(self) -> bool:
        """With follow_latest on, switch to a newer version of the model if one is served. Rate-limited."""
        now = time.monotonic()
        if not self.settings.follow_latest or now - self._last_follow_check < _FOLLOW_CHECK_SECONDS:
            return False
        self._last_follow_check = now
        assert self._stream is not None
        self._models = self.brain.models()
        latest = self._entry(self.settings.model).latest_version
        if latest == self._stream.version:
            return False
        logger.info("following %s: version %d -> %d", self.settings.model, self._stream.version, latest)
        self.settings = dataclasses.replace(self.settings, version=None)
        self.start()
        return True

    # ------------------------------------------------------------------ stepping

    def step(self) -> list[dict[str, Any]]:
        """One decision for every env, applied: returns ``[frame]``, plus a ``session`` message when the
        session switched version (follow latest) or reopened a lost stream."""
        if self._stream is None:
            raise ViewerConfigError("the session is not started (call start first)")
        if self._pending_reset.any():
            self._restart_finished()
        masks = self._env.action_masks()
        try:
            decision = self._stream.step(self._obs, self._starting.copy(), masks, self.settings.epsilon)
        except StreamLostError as exc:
            logger.warning("%s; reopening it", exc)
            session = self.start()
            notice = f"{exc}; reopened it and restarted the episodes"
            return [{"type": "error", "message": notice, "recovered": True}, session]
        self._starting[:] = False
        self._obs, reward, done, info = self._env.step(decision.actions)
        self._returns += reward
        self.tick += 1
        state = self._env.get_state()
        finished = self._finish(state, done | info["truncated"], decision.model, decision.version)
        unseen = {i for i in range(self.settings.num_envs) if i not in self._layouts_sent}
        layouts = {i: frames.layout_json(state.layouts[i]) for i in unseen}
        self._layouts_sent |= unseen
        frame = frames.frame_message(
            tick=self.tick,
            level=self._level,
            state=state,
            episodes=self._episodes.tolist(),
            returns=self._returns,
            q_values=decision.q_values,
            actions=decision.actions,
            masks=masks,
            interactions=info["successful_interactions"],
            model=decision.model,
            version=decision.version,
            finished=finished,
            layouts=layouts,
        )
        messages = [frame]
        if finished and self._follow_latest():
            messages.append(self.session_message())
        return messages

    def _finish(self, state: Any, ended: np.ndarray, model: str, version: int) -> list[frames.SurvivalRecord]:
        records = []
        for i in np.flatnonzero(ended & ~self._pending_reset):
            baseline = random_survival(self._level, self._starts[i], self.settings.baseline_episodes, self._rng)
            reason = "died" if state.dead[i] else "retired" if state.retired[i] else "truncated"
            records.append(
                frames.SurvivalRecord(
                    episode=int(self._episodes[i]),
                    env=int(i),
                    steps=int(state.step_counts[i]),
                    reward=float(self._returns[i]),
                    reason=reason,
                    baseline=float(baseline.mean()),
                    model=model,
                    version=version,
                )
            )
            self._pending_reset[i] = True
        self.history.extend(records)
        return records

    def _restart_finished(self) -> None:
        mask = self._pending_reset.copy()
        self._obs = self._env.reset_envs(mask)
        fresh = self._env.get_state()
        for i in np.flatnonzero(mask):
            self._episodes[i] = self._next_episode
            self._next_episode += 1
            self._returns[i] = 0.0
            self._starts[i] = select_env(fresh, int(i))
            if self.settings.layout == "random":
                self._layouts_sent.discard(int(i))
        self._starting |= mask
        self._pending_reset[:] = False

    # ------------------------------------------------------------------ messages

    @property
    def level(self) -> LevelConfig:
        return self._level

    def session_message(self) -> dict[str, Any]:
        """The ``session`` message: what is shown, the controls' values, and the envs as they stand."""
        assert self._stream is not None
        state = self._env.get_state()
        self._layouts_sent = set(range(self.settings.num_envs))
        return {
            "type": "session",
            "source": self.brain.source,
            "target": self.brain.label,
            "model": self._stream.model,
            "version": self._stream.version,
            "recurrent": self._stream.recurrent,
            "models": [m.to_json() for m in self._models],
            "level": frames.level_json(self._level),
            "levels": compatible_levels(self._entry_now.obs_dim),
            "layout": self.settings.layout,
            "layout_source": self._layout_source,
            "num_envs": self.settings.num_envs,
            "max_envs": MAX_ENVS,
            "epsilon": self.settings.epsilon,
            "follow_latest": self.settings.follow_latest,
            "follow_version": self.settings.version is None,
            "tick": self.tick,
            "meters": frames.meters_json(),
            "actions": list(frames.ACTION_NAMES),
            "envs": [
                {
                    "env": i,
                    "episode": int(self._episodes[i]),
                    "step": int(state.step_counts[i]),
                    "reward": round(float(self._returns[i]), 4),
                    "position": [int(state.positions[i, 0]), int(state.positions[i, 1])],
                    "meters": [round(float(v), 4) for v in state.meters[i]],
                    "time_of_day": int(state.time_of_day[i]) if self._level.temporal_mechanics else None,
                    "layout": frames.layout_json(state.layouts[i]),
                }
                for i in range(self.settings.num_envs)
            ],
            "survival": [record.to_json() for record in self.history],
        }
