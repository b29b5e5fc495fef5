"""hamlet_viewer's watch mode without a server: what the page draws, decoded from L1 (full grid), L2 and L3
(window) observations of `townlet.env`, equals the simulator state they came from; the watch page protocol
(newest frame only, a slow page never holds the reader back, read-only) over a fake client."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from starlette.testclient import TestClient

from hamlet_client import SessionInfo, WatchFrame
from hamlet_viewer.cli import build_parser, main
from hamlet_viewer.observed import FullGridTracker, ObservedEnv, decode_partial
from hamlet_viewer.watch import WatchView
from hamlet_viewer.watch_app import create_watch_app
from townlet.env import (
    AFFORDANCE_NAMES,
    NO_AFFORDANCE,
    EnvState,
    VectorTownletEnv,
    compute_action_masks,
    get_level,
    random_valid_actions,
)


def session_info(session_id: str, num_envs: int, obs_dim: int) -> SessionInfo:
    """A stream of version 2 of the 6-action model ``m``, as ListSessions lists it before its first step."""
    return SessionInfo(session_id, "m", 2, num_envs, obs_dim, action_dim=6, step_index=0)


@dataclass
class Played:
    """One step of a random-policy rollout: the observation sent, and the state it encodes."""

    obs: npt.NDArray[np.float32]
    reset: npt.NDArray[np.bool_]
    state: EnvState
    actions: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def rollout(level: str, num_envs: int, steps: int, *, relayout: bool, seed: int = 1) -> Iterator[Played]:
    """The observations a remote simulator would send, with the state each came from; finished envs restart."""
    env = VectorTownletEnv(level, num_envs, seed=seed, relayout_each_reset=relayout)
    rng = np.random.default_rng(seed)
    obs, reset = env.reset(), np.ones(num_envs, dtype=bool)
    for _ in range(steps):
        actions = random_valid_actions(env.action_masks(), rng)
        yield Played(obs, reset, env.get_state(), actions)
        obs, _, done, info = env.step(actions)
        reset = done | info["truncated"]
        if reset.any():
            obs = env.reset_envs(reset)


def cells_in(state: EnvState, i: int, region: tuple[int, int, int, int]) -> set[tuple[int, int]]:
    x0, y0, x1, y1 = region
    layout = state.layouts[i]
    return {(x, y) for y in range(y0, y1) for x in range(x0, x1) if layout[y, x] != NO_AFFORDANCE}


def assert_shows(seen: ObservedEnv, state: EnvState, i: int) -> None:
    """Everything the decode claims is the simulator's state (positions, cells, names, meters, clock)."""
    position = (int(state.positions[i, 0]), int(state.positions[i, 1]))
    truth = cells_in(state, i, seen.region)
    if seen.position is None:  # a full grid with the agent not yet seen to move: it is one of the candidates
        assert seen.candidates == truth | {position} and not seen.affordances
    else:
        assert seen.position == position and seen.affordances == truth and not seen.candidates
    for (x, y), name in seen.names.items():
        assert AFFORDANCE_NAMES[state.layouts[i][y, x]] == name
    here = state.layouts[i][position[1], position[0]]
    assert seen.affordance_here == (AFFORDANCE_NAMES[here] if here != NO_AFFORDANCE else None)
    np.testing.assert_array_equal(seen.meters, state.meters[i])  # float32 both: exact
    assert seen.step == state.step_counts[i]


def test_l1_full_grid_decodes_to_the_simulator_state_and_finds_the_agent_once_it_moves() -> None:
    level = get_level("L1")
    trackers = [FullGridTracker(level) for _ in range(4)]
    unknown, since_reset = 0, np.zeros(4, dtype=int)
    names_learned = 0
    for played in rollout("L1", 4, 400, relayout=True):
        for i, tracker in enumerate(trackers):
            seen = tracker.update(played.obs[i], bool(played.reset[i]))
            assert_shows(seen, played.state, i)
            assert seen.region == (0, 0, 8, 8) and seen.time_of_day is None and seen.progress is None
            since_reset[i] = 0 if played.reset[i] else since_reset[i] + 1
            if seen.position is None:
                unknown += 1
                assert since_reset[i] < 100  # only while the agent may not have left its start cell
            names_learned = max(names_learned, len(seen.names))
    assert unknown < 0.1 * 1600
    assert names_learned >= 3  # types of the affordances the agent stood on, remembered


def test_l1_with_the_trained_layout_knows_the_agent_and_every_type_from_the_first_frame() -> None:
    level = get_level("L1")
    layout = VectorTownletEnv("L1", 1, seed=5).affordance_positions()
    env = VectorTownletEnv("L1", 2, seed=9, layout=layout)
    tracker = [FullGridTracker(level, layout) for _ in range(2)]
    obs, rng = env.reset(), np.random.default_rng(0)
    for step in range(60):
        state = env.get_state()
        for i in range(2):
            seen = tracker[i].update(obs[i], step == 0)
            assert_shows(seen, state, i)
            assert seen.position is not None and len(seen.names) == len(level.enabled_affordances)
        obs, *_ = env.step(random_valid_actions(env.action_masks(), rng))


def test_l1_missed_frames_and_a_missed_reset_onto_a_new_layout_still_decode_right() -> None:
    level = get_level("L1")
    tracker = FullGridTracker(level)
    rng = np.random.default_rng(3)
    for played in rollout("L1", 1, 600, relayout=True, seed=4):
        if rng.random() < 0.6:  # a slow watcher: most frames dropped, reset flags with them
            continue
        assert_shows(tracker.update(played.obs[0], reset=False), played.state, 0)


@pytest.mark.parametrize("level_name", ["L2", "L3"])
def test_window_observations_decode_to_the_simulator_state(level_name: str) -> None:
    level = get_level(level_name)
    for played in rollout(level_name, 3, 300, relayout=True):
        for i in range(3):
            seen = decode_partial(played.obs[i], level)
            assert_shows(seen, played.state, i)
            x, y = seen.position or (-1, -1)
            assert seen.region == (max(0, x - 2), max(0, y - 2), min(8, x + 3), min(8, y + 3))
            if level.temporal_mechanics:
                assert (seen.time_of_day, seen.progress) == (
                    played.state.time_of_day[i],
                    played.state.interaction_progress[i],
                )
            else:
                assert seen.time_of_day is None


def test_window_cells_are_named_from_the_trained_layout_when_the_window_agrees() -> None:
    level = get_level("L2")
    layout = VectorTownletEnv("L2", 1, seed=3).affordance_positions()
    other = VectorTownletEnv("L2", 1, seed=4).affordance_positions()
    obs = VectorTownletEnv("L2", 1, seed=0, layout=layout).reset()[0]
    seen = decode_partial(obs, level, layout)
    assert seen.affordances and set(seen.names) == set(seen.affordances)
    wrong = decode_partial(obs, level, other)  # not this world's layout: only the type underfoot is claimed
    assert set(wrong.names) <= {seen.position}


def test_decoding_refuses_an_observation_of_another_width() -> None:
    with pytest.raises(ValueError, match=r"level L2 is \[54\] floats, got shape \[91\]"):
        decode_partial(np.zeros(91, dtype=np.float32), get_level("L2"))
    with pytest.raises(ValueError, match="partially observed"):
        FullGridTracker(get_level("L2"))


def state_masks(state: EnvState) -> np.ndarray:
    here = state.layouts[np.arange(len(state.positions)), state.positions[:, 1], state.positions[:, 0]]
    return compute_action_masks(state.positions, here, state.layouts.shape[1], np.zeros(len(here), dtype=bool))


def frames_of(level: str, num_envs: int, steps: int, session_id: str = "s1") -> list[tuple[WatchFrame, EnvState]]:
    out = []
    for index, played in enumerate(rollout(level, num_envs, steps, relayout=False)):
        q = np.random.default_rng(index).normal(size=(num_envs, 6)).astype(np.float32)
        frame = WatchFrame(session_id, "m", 2, index, played.obs, q, played.actions, played.reset, frames_dropped=0)
        out.append((frame, played.state))
    return out


@pytest.mark.parametrize("level_name", ["L1", "L2"])
def test_the_watch_frame_json_is_the_state_the_observations_came_from(level_name: str) -> None:
    obs_dim = get_level(level_name).obs_dim
    view = WatchView(session_info("s1", 2, obs_dim), {"level": level_name})
    assert view.session_message()["level"]["name"] == level_name
    for frame, state in frames_of(level_name, 2, 80):
        message = view.frame_message(frame, skipped=3)
        assert (message["step_index"], message["skipped"], message["version"]) == (frame.step_index, 3, 2)
        for i, env in enumerate(message["envs"]):
            x, y = int(state.positions[i, 0]), int(state.positions[i, 1])
            if env["position"] is not None:
                assert env["position"] == [x, y]
                assert {(c["x"], c["y"]) for c in env["cells"]} == cells_in(state, i, tuple(env["region"]))
            else:
                assert [x, y] in env["candidates"]
            assert env["meters"] == [round(float(v), 4) for v in state.meters[i]]
            assert env["step"] == state.step_counts[i]
            assert env["q_values"] == [round(float(v), 4) for v in frame.q_values[i]]
            assert env["action"] == frame.actions[i] and env["reset"] == bool(frame.reset[i])
            if env["position"] is not None:  # the mask the simulator computed for that state
                assert env["mask"] == state_masks(state)[i].tolist()
            greedy = np.where(env["mask"], frame.q_values[i], -np.inf).argmax()
            assert env["greedy_action"] == greedy


def test_the_level_comes_from_metadata_else_from_the_observation_width() -> None:
    assert WatchView(session_info("s", 1, 54), {}).level.name == "L2"
    assert WatchView(session_info("s", 1, 54), {"level": "L3"}).level.name == "L3"
    assert WatchView(session_info("s", 1, 54), {}, level="L3").level.name == "L3"
    assert WatchView(session_info("s", 1, 91), {}).level.name == "L1"


# --------------------------------------------------------------------------- the page, over a fake client


class FakeClient:
    """`AsyncHamletClient`'s watch side: one session whose frames all come at once, as fast as they can."""

    def __init__(
        self, frames: list[WatchFrame], session: SessionInfo, *, ends: bool = False, others: tuple[str, ...] = ()
    ) -> None:
        self.frames = frames
        self.session = session
        self.ends = ends
        self.others = [dataclasses.replace(session, session_id=other) for other in others]
        self.yielded = 0
        self.closed = False

    async def list_sessions(self) -> list[SessionInfo]:
        return [self.session, *self.others]

    async def metadata(self, model: str, *, version: int | None = None) -> Any:
        @dataclass
        class Meta:
            extra: dict[str, str]

        return Meta({"level": "L1"})

    async def watch(self, session_id: str | None = None) -> AsyncIterator[WatchFrame]:
        assert session_id in {s.session_id for s in [self.session, *self.others]}
        for frame in self.frames:
            self.yielded += 1
            yield dataclasses.replace(frame, session_id=session_id)
            await asyncio.sleep(0)
        if not self.ends:
            await asyncio.sleep(3600)  # the stream stays open

    async def close(self) -> None:
        self.closed = True


def receive_until(ws: Any, kind: str) -> list[dict[str, Any]]:
    messages = []
    while True:
        messages.append(ws.receive_json())
        if messages[-1]["type"] == kind:
            return messages


def test_the_page_gets_the_newest_frames_and_a_slow_page_does_not_hold_the_reader_back() -> None:
    frames = [frame for frame, _ in frames_of("L1", 2, 300)]
    fake = FakeClient(frames, session_info("s1", 2, 91))
    app = create_watch_app(lambda: fake, max_fps=20)
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        sessions = ws.receive_json()
        assert sessions["type"] == "sessions" and sessions["watching"] == "s1"
        watch = ws.receive_json()
        assert (watch["type"], watch["session_id"], watch["level"]["name"], watch["num_envs"]) == (
            "watch",
            "s1",
            "L1",
            2,
        )
        time.sleep(0.5)  # the page reads nothing: the reader still takes every frame off the stream
        assert fake.yielded == len(frames)
        shown = []
        while not shown or shown[-1]["step_index"] != len(frames) - 1:
            message = ws.receive_json()
            if message["type"] == "watch_frame":
                shown.append(message)
        indices = [m["step_index"] for m in shown]
        assert indices == sorted(set(indices)) and len(shown) <= 3  # the newest, in order, not a queue
        assert shown[-1]["skipped"] == len(frames) - len(shown)
        ws.send_json({"type": "play"})
        assert "read-only" in receive_until(ws, "error")[-1]["message"]
    assert fake.closed


def test_cli_watch_flags() -> None:
    args = build_parser().parse_args(["--watch", "--session", "abc"])
    assert (args.watch, args.session, args.max_fps) == (True, "abc", 30.0)
    assert main(["--session", "abc"]) == 2  # --session without --watch
    assert main(["--watch", "--checkpoint", "x.pt"]) == 2


def test_a_session_that_ends_shows_its_last_frame_then_says_it_ended() -> None:
    frames = [frame for frame, _ in frames_of("L2", 1, 50)]
    fake = FakeClient(frames, session_info("s9", 1, 54), ends=True)
    with TestClient(create_watch_app(lambda: fake, session_id="s9", max_fps=10)) as client:
        page = client.get("/")
        scripts = re.findall(r'<script src="([^"]+)">', page.text)
        assert page.status_code == 200 and scripts == ["/static/common.js", "/static/watch.js"]  # shared code first
        assert all(client.get(path).status_code == 200 for path in scripts)
        with client.websocket_connect("/ws") as ws:
            messages = receive_until(ws, "watch_status")
    shown = [m["step_index"] for m in messages if m["type"] == "watch_frame"]
    assert shown[-1] == 49 and messages[-1]["state"] == "ended"


def test_the_page_switches_to_another_session() -> None:
    frames = [frame for frame, _ in frames_of("L1", 1, 5)]
    fake = FakeClient(frames, session_info("s1", 1, 91), others=("s2",))
    with TestClient(create_watch_app(lambda: fake)) as client, client.websocket_connect("/ws") as ws:
        assert receive_until(ws, "watch")[-1]["session_id"] == "s1"
        ws.send_json({"type": "watch", "session_id": "s2"})
        switched = receive_until(ws, "watch")
        listed = switched[-2]
        assert switched[-1]["session_id"] == "s2" and listed["type"] == "sessions" and listed["watching"] == "s2"
        assert [s["session_id"] for s in listed["sessions"]] == ["s1", "s2"]
        frame = receive_until(ws, "watch_frame")[-1]
        assert frame["session_id"] == "s2"
