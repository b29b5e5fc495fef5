"""``hamlet-viewer --watch`` against a real server with ``enable_watch`` and a token: a remote simulator plays
the demo L1 and L2 models through the client SDK in a thread; the viewer's watch page (the real app, over
the real `AsyncHamletClient`) receives that session's frames with the right step indices, and what it draws
from each observation is the simulator's state at that step."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_server import ThreadedServer
from starlette.testclient import TestClient

from hamlet_client import HamletClient
from hamlet_server.config import ServerConfig
from hamlet_viewer.cli import build_parser, watch_app_from_args
from hamlet_viewer.world import trained_layout
from townlet.env import EnvState, VectorTownletEnv, get_level
from townlet.inference import HamletModel

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "watch-secret"
DEMO = {"L1": ROOT / "models" / "townlet-L1-mlp", "L2": ROOT / "models" / "townlet-L2-lstm"}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def server(token_file: Path) -> Iterator[ThreadedServer]:
    config = ServerConfig(
        models=ROOT / "models", port=0, metrics_port=0, poll_interval=0, token_file=str(token_file), enable_watch=True
    )
    live = ThreadedServer(config)
    yield live
    live.stop()


@dataclass
class Step:
    state: EnvState
    """The state the step's observations encode."""
    q_values: np.ndarray
    actions: np.ndarray


class RemoteSimulator(threading.Thread):
    """Plays ``steps`` steps of a demo model through `HamletClient.episode`, recording each by step index."""

    def __init__(self, target: str, level: str, steps: int, pace: float) -> None:
        super().__init__(daemon=True)
        self.target, self.level, self.steps, self.pace = target, level, steps, pace
        self.model = DEMO[level].name
        self.record: dict[int, Step] = {}
        self.error: BaseException | None = None
        self.opened = threading.Event()

    def run(self) -> None:
        try:
            meta = HamletModel.load(next(DEMO[self.level].glob("model_ep*.pt"))).metadata
            layout = trained_layout(meta, get_level(self.level))
            env = VectorTownletEnv(self.level, 2, seed=0, layout=layout)
            obs, reset = env.reset(), np.ones(2, dtype=bool)
            with HamletClient(self.target, token=TOKEN) as client, client.episode(self.model, num_envs=2) as ep:
                self.opened.set()
                for _ in range(self.steps):
                    state = env.get_state()
                    step = ep.step(obs, reset=reset, action_mask=env.action_masks())
                    self.record[step.step_index] = Step(state, step.q_values.copy(), step.actions.copy())
                    obs, _, done, info = env.step(step.actions)
                    reset = done | info["truncated"]
                    if reset.any():
                        obs = env.reset_envs(reset)
                    time.sleep(self.pace)
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.opened.set()


def watch_app(server: ThreadedServer, token_file: Path, *extra: str) -> Any:
    args = build_parser().parse_args(["--watch", "--target", server.target, "--token-file", str(token_file), *extra])
    return watch_app_from_args(args)


@pytest.mark.parametrize("level", ["L1", "L2"])
def test_the_watch_page_follows_a_running_session_step_by_step(
    server: ThreadedServer, token_file: Path, level: str
) -> None:
    simulator = RemoteSimulator(server.target, level, steps=150, pace=0.01)
    with TestClient(watch_app(server, token_file, "--max-fps", "60")) as client, client.websocket_connect("/ws") as ws:
        first = ws.receive_json()
        assert first == {"type": "sessions", "watching": None, "sessions": []}
        assert ws.receive_json()["state"] == "waiting"
        simulator.start()
        while (message := ws.receive_json())["type"] != "watch":
            pass
        assert (message["model"], message["num_envs"], message["level"]["name"]) == (simulator.model, 2, level)
        # The L1 demo records its training layout; the L2 one trained on a fresh layout every episode.
        assert message["layout_known"] is (level == "L1")
        frames = []
        while not frames or frames[-1]["step_index"] < 149:  # the stream's last step is always shown
            message = ws.receive_json()
            assert message["type"] in ("watch_frame", "sessions"), message
            if message["type"] == "watch_frame":
                frames.append(message)
    simulator.join(timeout=30)
    assert simulator.error is None, simulator.error
    indices = [frame["step_index"] for frame in frames]
    assert len(frames) >= 5 and indices == sorted(set(indices))  # in order, each at most once (the newest, not a queue)
    for frame in frames:
        step = simulator.record[frame["step_index"]]
        assert (frame["model"], frame["session_id"] != "") == (simulator.model, True)
        for i, env in enumerate(frame["envs"]):
            assert env["position"] == [int(v) for v in step.state.positions[i]]  # the layout names the agent
            assert env["meters"] == [round(float(v), 4) for v in step.state.meters[i]]
            assert env["step"] == step.state.step_counts[i]
            assert env["q_values"] == [round(float(v), 4) for v in step.q_values[i]]
            assert env["action"] == step.actions[i]
            assert env["greedy_action"] == step.actions[i]  # greedy under the mask inferred from the observation
    assert frames[-1]["frames_dropped"] >= 0


def test_a_server_without_enable_watch_is_named_on_the_page(token_file: Path) -> None:
    live = ThreadedServer(
        ServerConfig(models=DEMO["L1"].parent, port=0, metrics_port=0, poll_interval=0, token_file=str(token_file))
    )
    try:
        with TestClient(watch_app(live, token_file)) as client, client.websocket_connect("/ws") as ws:
            error = ws.receive_json()
        assert error["type"] == "error" and "--enable-watch" in error["message"], error
    finally:
        live.stop()


def test_without_the_token_the_page_says_so(server: ThreadedServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    with TestClient(watch_app(server, wrong)) as client, client.websocket_connect("/ws") as ws:
        error = ws.receive_json()
    assert error["type"] == "error" and "Unauthenticated" in error["message"], error
