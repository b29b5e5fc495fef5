"""`WatchView`: the frames of one watched server session (``WatchEpisodes``) turned into the page's messages,
drawn from the observations alone (`hamlet_viewer.observed`).

Server -> page messages of the watch mode (JSON, ``type``):

- ``sessions``: the server's open episode streams (ListSessions) and the one being watched (``watching``).
- ``watch``: the session now shown: its id, model, version, envs, the level its observations are read as,
  the meter and action descriptions. Sent when a watch starts.
- ``watch_frame``: the latest frame (the page gets the newest, not every one): step index, model and
  version, ``frames_dropped`` (by the server for this watcher) and ``skipped`` (received but replaced by a
  newer one before the page was sent it), and per env what the observation shows, the Q-values, the action,
  the mask `townlet.env` would apply in the state shown (inferred: the frame carries none), the argmax
  under it, and whether the observation started an episode.
- ``watch_status``: ``waiting`` (no session to watch yet), ``ended`` (the watched stream ended), with a
  message; ``error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from hamlet_viewer.frames import ACTION_NAMES, level_json, meters_json
from hamlet_viewer.observed import FullGridTracker, ObservedEnv, action_mask, decode_partial, observed_json
from hamlet_viewer.world import choose_level, trained_layout

if TYPE_CHECKING:  # for the annotations only: `hamlet-viewer --checkpoint` starts without the client's gRPC
    from hamlet_client import SessionInfo, WatchFrame

__all__ = ["WatchView", "sessions_message"]


def sessions_message(sessions: list[SessionInfo], watching: str | None) -> dict[str, Any]:
    """The ``sessions`` message from `HamletClient.list_sessions`'s answer."""
    return {
        "type": "sessions",
        "watching": watching,
        "sessions": [
            {
                "session_id": s.session_id,
                "model": s.model,
                "version": int(s.version),
                "num_envs": int(s.num_envs),
                "obs_dim": int(s.obs_dim),
                "step_index": int(s.step_index),
            }
            for s in sessions
        ],
    }


class WatchView:
    """Decodes the frames of one watched session, in order (frames may be missing).

    Args:
        session: the session from ListSessions.
        metadata: its model version's checkpoint metadata (``level``, ``seed``, ``affordance_layout``...), or
            empty; it names the level (else the first of that observation width) and the trained layout,
            which names affordance types while the observations agree with it.
        level: read the observations as this level instead.
    """

    def __init__(self, session: SessionInfo, metadata: Mapping[str, Any], level: str | None = None) -> None:
        self.session = session
        self.level = choose_level(int(session.obs_dim), level, metadata)
        self.layout = trained_layout(metadata, self.level)
        self._trackers = (
            None
            if self.level.partial_observability
            else [FullGridTracker(self.level, self.layout) for _ in range(session.num_envs)]
        )

    def session_message(self) -> dict[str, Any]:
        """The ``watch`` message."""
        s = self.session
        return {
            "type": "watch",
            "session_id": s.session_id,
            "model": s.model,
            "version": int(s.version),
            "num_envs": int(s.num_envs),
            "obs_dim": int(s.obs_dim),
            "level": level_json(self.level),
            "layout_known": self.layout is not None,
            "meters": meters_json(),
            "actions": list(ACTION_NAMES)[: int(s.action_dim)],
        }

    def decode(self, frame: WatchFrame) -> list[ObservedEnv]:
        """What each env's observation of ``frame`` shows (advances the full-grid trackers)."""
        obs = np.asarray(frame.observations, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.level.obs_dim:
            raise ValueError(
                f"session {frame.session_id}: observations of shape {list(obs.shape)}, expected "
                f"[num_envs, {self.level.obs_dim}] for level {self.level.name}"
            )
        reset = np.asarray(frame.reset, dtype=bool)
        if reset.size == 0:
            reset = np.zeros(len(obs), dtype=bool)
        if self._trackers is None:
            return [decode_partial(row, self.level, self.layout) for row in obs]
        if len(self._trackers) != len(obs):  # the session cannot change its env count; be lenient anyway
            self._trackers = [FullGridTracker(self.level, self.layout) for _ in range(len(obs))]
        return [tracker.update(row, bool(r)) for tracker, row, r in zip(self._trackers, obs, reset, strict=True)]

    def frame_message(self, frame: WatchFrame, *, skipped: int = 0) -> dict[str, Any]:
        """The ``watch_frame`` message of ``frame``; ``skipped``: frames this viewer received but did not show."""
        seen = self.decode(frame)
        q_values = np.asarray(frame.q_values, dtype=np.float32)
        reset = np.asarray(frame.reset, dtype=bool)
        envs = []
        for i, env in enumerate(seen):
            q = q_values[i] if i < len(q_values) else np.zeros(0, dtype=np.float32)
            mask = action_mask(env, self.level)[: q.size] if q.size == 6 else np.ones(q.size, dtype=bool)
            envs.append(
                {
                    "env": i,
                    **observed_json(env),
                    "q_values": [round(float(v), 4) for v in q],
                    "mask": [bool(m) for m in mask],
                    "action": int(frame.actions[i]) if i < len(frame.actions) else None,
                    "greedy_action": int(np.argmax(np.where(mask, q, -np.inf))) if q.size else None,
                    "reset": bool(reset[i]) if i < reset.size else False,
                }
            )
        return {
            "type": "watch_frame",
            "session_id": frame.session_id,
            "model": frame.model,
            "version": int(frame.version),
            "step_index": int(frame.step_index),
            "frames_dropped": int(frame.frames_dropped),
            "skipped": int(skipped),
            "envs": envs,
        }
