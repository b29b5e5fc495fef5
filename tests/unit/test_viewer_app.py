"""hamlet_viewer's web app over a local checkpoint: the WebSocket protocol (one frame per step, play/pause,
errors that keep the page usable), the same-origin check, and the assets (no CDN)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from hamlet_viewer import LocalBrain, SessionSettings, StreamLostError
from hamlet_viewer.app import DEFAULT_SPEED, STATIC_DIR, create_app
from hamlet_viewer.cli import build_parser
from townlet.agent.networks import SimpleQNetwork
from townlet.inference import HamletModel, save_inference_checkpoint


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    torch.manual_seed(0)
    path = tmp_path / "mlp" / "model_ep00004.pt"
    path.parent.mkdir()
    save_inference_checkpoint(HamletModel(SimpleQNetwork(91, 6)), path, metadata={"episode": 4})
    app = create_app(LocalBrain(path), SessionSettings(num_envs=2), speed=120.0)
    with TestClient(app) as test_client:
        yield test_client


def receive_until(ws: Any, kind: str) -> list[dict[str, Any]]:
    """Messages up to and including the first of type ``kind``."""
    messages = []
    while True:
        messages.append(ws.receive_json())
        if messages[-1]["type"] == kind:
            return messages


def test_page_and_assets_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/")
    scripts = re.findall(r'<script src="([^"]+)">', page.text)
    assert page.status_code == 200 and scripts == ["/static/common.js", "/static/viewer.js"]  # shared code first
    for path in [*scripts, "/static/viewer.css"]:
        assert client.get(path).status_code == 200
    assert client.get("/frame-schema.json").json()["properties"]["type"] == {"const": "frame"}


def test_assets_load_nothing_from_other_hosts() -> None:
    for path in STATIC_DIR.iterdir():
        urls = set(re.findall(r"https?://[^\s\"'`)]+", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, f"{path.name} refers to {urls}"


def test_each_step_command_sends_exactly_one_frame(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        assert [m["type"] for m in receive_until(ws, "status")] == ["session", "status"]
        ticks = []
        for _ in range(3):
            ws.send_json({"type": "step"})
            messages = receive_until(ws, "status")
            assert [m["type"] for m in messages] == ["frame", "status"]
            assert messages[-1]["playing"] is False
            ticks.append(messages[0]["tick"])
        assert ticks == [1, 2, 3]


def test_play_streams_frames_until_pause(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        receive_until(ws, "status")
        ws.send_json({"type": "play"})
        frames = [m for m in (ws.receive_json() for _ in range(12)) if m["type"] == "frame"]
        assert len(frames) >= 10
        assert [f["tick"] for f in frames] == list(range(1, len(frames) + 1))
        ws.send_json({"type": "pause"})
        paused = receive_until(ws, "status")
        assert paused[-1]["playing"] is False
        last = [m["tick"] for m in frames + paused if m["type"] == "frame"][-1]
        ws.send_json({"type": "step"})  # no frame follows the pause's status: the step's frame comes next
        assert [(m["type"], m.get("tick")) for m in receive_until(ws, "status")] == [
            ("frame", last + 1),
            ("status", None),
        ]


def test_bad_commands_get_an_error_and_the_page_keeps_working(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        receive_until(ws, "status")
        for bad, text in [
            ({"type": "jump"}, "unknown message type 'jump'"),
            ({"type": "speed", "value": 1000}, "speed must be in"),
            ({"type": "configure", "settings": {"colour": 1}}, "unknown setting 'colour'"),
            ({"type": "configure", "settings": {"model": "nope"}}, "model 'nope': not served"),
            ({"type": "configure", "settings": {"epsilon": 2}}, "epsilon must be in"),
        ]:
            ws.send_json(bad)
            error = ws.receive_json()
            assert error["type"] == "error" and text in error["message"], error
        ws.send_text("not json")
        assert ws.receive_json()["type"] == "error"
        ws.send_json({"type": "step"})
        assert receive_until(ws, "frame")[-1]["tick"] == 1


def test_configure_and_new_episode_send_a_fresh_session(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        receive_until(ws, "status")
        ws.send_json({"type": "configure", "settings": {"num_envs": 4, "epsilon": 0.25}})
        session = receive_until(ws, "session")[-1]
        assert (session["num_envs"], session["epsilon"], len(session["envs"])) == (4, 0.25, 4)
        ws.send_json({"type": "step"})
        assert len(receive_until(ws, "frame")[-1]["envs"]) == 4
        ws.send_json({"type": "new_episode"})
        fresh = receive_until(ws, "session")[-1]
        assert [env["step"] for env in fresh["envs"]] == [0, 0, 0, 0]
        assert [env["episode"] for env in fresh["envs"]] == [6, 7, 8, 9]  # 0-1 first, 2-5 after configure


def test_pages_of_other_sites_are_refused(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws", headers={"origin": "http://evil.example"}):
        pass
    with client.websocket_connect("/ws", headers={"origin": "http://testserver"}) as ws:
        assert ws.receive_json()["type"] == "session"


def test_cli_defaults_bind_loopback_and_target_the_default_server() -> None:
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.target, args.checkpoint) == ("127.0.0.1", 8765, "localhost:50051", "")


class _FailingBrain(LocalBrain):
    """A local brain whose streams break after ``ok_steps`` steps, and that cannot reopen them (a server gone)."""

    def __init__(self, path: Path, ok_steps: int) -> None:
        super().__init__(path)
        self.ok_steps = ok_steps
        self.opened = 0

    def open(self, model: str, version: int | None, num_envs: int, seed: int | None) -> Any:
        self.opened += 1
        if self.opened > 1:
            raise ConnectionError("server unreachable")
        stream = super().open(model, version, num_envs, seed)
        step, brain = stream.step, self

        def failing_step(*args: Any) -> Any:
            if brain.ok_steps == 0:
                raise StreamLostError("the episode stream ended: UNAVAILABLE")
            brain.ok_steps -= 1
            return step(*args)

        stream.step = failing_step  # type: ignore[method-assign]
        return stream


def test_a_failing_step_pauses_the_page_with_the_reason(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "mlp" / "model_ep00001.pt"
    path.parent.mkdir()
    save_inference_checkpoint(HamletModel(SimpleQNetwork(91, 6)), path, metadata={"episode": 1})
    app = create_app(_FailingBrain(path, ok_steps=3), SessionSettings(), speed=120.0)
    with TestClient(app) as test_client, test_client.websocket_connect("/ws") as ws:
        receive_until(ws, "status")
        ws.send_json({"type": "play"})
        messages = receive_until(ws, "error")
        assert [m["tick"] for m in messages if m["type"] == "frame"] == [1, 2, 3]
        assert "server unreachable" in messages[-1]["message"]
        assert ws.receive_json() == {
            "type": "status", "playing": False, "speed": 120.0, "server_up": True, "server_problem": ""
        }  # fmt: skip
        ws.send_json({"type": "step"})  # the page stays connected and keeps answering
        assert "server unreachable" in receive_until(ws, "error")[-1]["message"]


class _GoneBrain(_FailingBrain):
    """A `_FailingBrain` whose server does not answer once its streams broke, until ``back`` is set."""

    def __init__(self, path: Path, ok_steps: int) -> None:
        super().__init__(path, ok_steps)
        self.back = False

    def problem(self) -> str | None:
        return None if self.ok_steps or self.back else "UnavailableError: failed to connect to all addresses"


def test_the_status_says_whether_the_server_answers_and_when_it_comes_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "mlp" / "model_ep00001.pt"
    path.parent.mkdir()
    save_inference_checkpoint(HamletModel(SimpleQNetwork(91, 6)), path, metadata={"episode": 1})
    brain = _GoneBrain(path, ok_steps=2)
    app = create_app(brain, SessionSettings(), speed=120.0, probe_seconds=0.05)
    with TestClient(app) as test_client, test_client.websocket_connect("/ws") as ws:
        assert receive_until(ws, "status")[-1]["server_up"] is True
        ws.send_json({"type": "play"})
        messages = receive_until(ws, "error")
        down = ws.receive_json()  # the step failed and the brain's server does not answer: the page says so
        assert (down["type"], down["playing"], down["server_up"]) == ("status", False, False)
        assert down["server_problem"] == "UnavailableError: failed to connect to all addresses"
        assert [m["tick"] for m in messages if m["type"] == "frame"] == [1, 2]
        brain.back = True  # paused: the probe notices the server is back without any command from the page
        back = ws.receive_json()
        assert (back["type"], back["playing"], back["server_up"], back["server_problem"]) == ("status", False, True, "")


def test_a_page_that_cannot_start_is_told_the_server_is_down(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "mlp" / "model_ep00001.pt"
    path.parent.mkdir()
    save_inference_checkpoint(HamletModel(SimpleQNetwork(91, 6)), path, metadata={"episode": 1})
    brain = _GoneBrain(path, ok_steps=0)
    brain.opened = 1  # every open fails, as with a server that is gone
    with TestClient(create_app(brain, SessionSettings())) as test_client, test_client.websocket_connect("/ws") as ws:
        status, error = ws.receive_json(), ws.receive_json()
    assert (status["type"], status["server_up"]) == ("status", False) and "failed to connect" in status[
        "server_problem"
    ]
    assert error == {"type": "error", "message": "ConnectionError: server unreachable"}


def test_the_default_speed_ends_an_episode_within_seconds() -> None:
    assert DEFAULT_SPEED == 30.0 and build_parser().parse_args([]).speed == DEFAULT_SPEED  # ~250 steps in ~8 s
    page = (STATIC_DIR / "index.html").read_text()
    assert 'id="speed" type="range" min="1" max="120" step="1" value="30"' in page  # the slider starts there too
