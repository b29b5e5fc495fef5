"""hamlet_viewer's session and the state it pushes: JSON schema, one frame per step, the LSTM state carried
(the Q-values shown equal a manual `HamletModel` rollout), the trained layout, follow-latest, the baseline."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from live_server import ThreadedServer

from hamlet_server.config import ServerConfig
from hamlet_viewer import LocalBrain, RemoteBrain, SessionSettings, ViewerConfigError, ViewerSession
from hamlet_viewer.baseline import random_survival, select_env
from hamlet_viewer.frames import FRAME_SCHEMA
from hamlet_viewer.world import choose_level, trained_layout
from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.env import VectorTownletEnv, get_level
from townlet.inference import HamletModel, save_inference_checkpoint
from townlet.inference.filenames import inference_checkpoint_name

LAYOUT_L2 = VectorTownletEnv("L2", 1, seed=3).affordance_positions()


def write_checkpoint(folder: Path, kind: str, episode: int, torch_seed: int, **metadata: Any) -> Path:
    """A seeded untrained model saved as ``folder/model_ep<episode>.pt``."""
    torch.manual_seed(torch_seed)
    network = SimpleQNetwork(91, 6) if kind == "mlp" else RecurrentSpatialQNetwork(action_dim=6)
    path = folder / inference_checkpoint_name(episode)
    folder.mkdir(parents=True, exist_ok=True)
    save_inference_checkpoint(HamletModel(network), path, metadata={"episode": episode, **metadata})
    return path


@pytest.fixture
def lstm_path(tmp_path: Path) -> Path:
    layout = {name: list(pos) for name, pos in LAYOUT_L2.items()}
    return write_checkpoint(
        tmp_path / "lstm", "lstm", 7, torch_seed=1, level="L2", seed=3, relayout=False, affordance_layout=layout
    )


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "mlp", "mlp", 3, torch_seed=0)


def run_frames(session: ViewerSession, steps: int) -> list[dict[str, Any]]:
    frames = []
    for _ in range(steps):
        messages = session.step()
        assert [m["type"] for m in messages] == ["frame"]  # exactly one message per step
        frames.append(messages[0])
    return frames


def manual_rollout(path: Path, steps: int, num_envs: int, seed: int) -> list[np.ndarray]:
    """Q-values of a by-hand loop: the trained layout, masks, greedy, LSTM state carried, rows of
    restarted envs zeroed; finished envs restart on the next step, as the viewer does."""
    model = HamletModel.load(path)
    env = VectorTownletEnv("L2", num_envs, seed=seed, layout=LAYOUT_L2)
    obs = env.reset()
    hidden = None
    starts = np.ones(num_envs, dtype=bool)
    finished = np.zeros(num_envs, dtype=bool)
    q_values = []
    for _ in range(steps):
        if finished.any():
            obs = env.reset_envs(finished)
            starts = finished
        result = model.predict(obs, hidden=hidden, action_mask=env.action_masks(), episode_start=starts)
        hidden, starts = result.hidden, np.zeros(num_envs, dtype=bool)
        q_values.append(np.asarray(result.q_values))
        obs, _, done, info = env.step(np.asarray(result.actions))
        finished = done | info["truncated"]
    return q_values


def test_every_frame_matches_the_schema_through_episode_ends(mlp_path: Path) -> None:
    session = ViewerSession(LocalBrain(mlp_path), SessionSettings(num_envs=3, seed=5))
    start = session.start()
    assert start["type"] == "session" and start["level"]["name"] == "L1" and start["layout_source"] == "seed"
    frames = run_frames(session, 150)  # an untrained MLP dies well before 150 steps
    validator = jsonschema.Draft202012Validator(FRAME_SCHEMA)
    for frame in frames:
        validator.validate(json.loads(json.dumps(frame, allow_nan=False)))
    assert [f["tick"] for f in frames] == list(range(1, 151))
    finished = [record for f in frames for record in f["finished"]]
    assert finished, "no episode ended in 150 steps"
    assert [r.episode for r in session.history] == [r["episode"] for r in finished]
    for record in finished:
        assert 1 <= record["steps"] <= 500 and 1 <= record["baseline"] <= 500
        assert record["reason"] in ("died", "truncated")
    # layouts travel once per env (the session message carries them), not in every frame
    assert not any("layout" in env for f in frames for env in f["envs"])


def test_the_frame_after_an_episode_end_starts_the_next_episode(mlp_path: Path) -> None:
    session = ViewerSession(LocalBrain(mlp_path), SessionSettings(num_envs=1, seed=5))
    session.start()
    frames = run_frames(session, 150)
    end = next(i for i, f in enumerate(frames) if f["finished"])
    assert frames[end]["envs"][0]["status"] in ("died", "truncated")
    after = frames[end + 1]["envs"][0]
    assert (after["episode"], after["step"], after["status"]) == (1, 1, "alive")
    assert 0 < after["reward"] < frames[end]["envs"][0]["reward"]  # a fresh episode return


def test_local_lstm_q_values_equal_a_manual_rollout_with_the_state_carried(lstm_path: Path) -> None:
    steps, num_envs = 200, 2
    session = ViewerSession(LocalBrain(lstm_path), SessionSettings(num_envs=num_envs, seed=11))
    started = session.start()
    assert (started["level"]["name"], started["layout_source"], started["recurrent"]) == ("L2", "trained", True)
    assert {(c["name"], c["x"], c["y"]) for c in started["envs"][0]["layout"]} == {
        (name, x, y) for name, (x, y) in LAYOUT_L2.items()
    }
    frames = run_frames(session, steps)
    shown = [np.array([env["q_values"] for env in f["envs"]]) for f in frames]
    expected = manual_rollout(lstm_path, steps, num_envs, seed=11)
    assert any(f["finished"] for f in frames), "want an env restart inside the compared window"
    for t in range(steps):
        np.testing.assert_allclose(shown[t], expected[t], atol=1e-4, err_msg=f"step {t + 1}")
    # the comparison can fail: a policy that forgot its state (Hamlet's live server) gives other Q-values
    model = HamletModel.load(lstm_path)
    env = VectorTownletEnv("L2", num_envs, seed=11, layout=LAYOUT_L2)
    env.reset()
    for frame in frames[:5]:
        env.step(np.array([e["action"] for e in frame["envs"]]))
    stateless = np.asarray(model.predict(env.observe(), hidden=None).q_values)
    assert np.abs(stateless - shown[5]).max() > 1e-3


def test_actions_are_chosen_from_the_shown_q_values(lstm_path: Path) -> None:
    session = ViewerSession(LocalBrain(lstm_path), SessionSettings(num_envs=2, seed=0, epsilon=0.0))
    session.start()
    for frame in run_frames(session, 40):
        for env in frame["envs"]:
            q = np.where(env["mask"], env["q_values"], -np.inf)
            assert env["action"] == env["greedy_action"] == int(q.argmax())


def test_epsilon_explores_only_among_allowed_actions(mlp_path: Path) -> None:
    session = ViewerSession(LocalBrain(mlp_path), SessionSettings(num_envs=4, seed=0, epsilon=1.0))
    session.start()
    frames = run_frames(session, 30)
    envs = [env for f in frames for env in f["envs"]]
    assert all(env["mask"][env["action"]] for env in envs)
    assert any(env["action"] != env["greedy_action"] for env in envs)


@pytest.fixture
def served_lstm(lstm_path: Path, mlp_path: Path) -> Iterator[ThreadedServer]:
    server = ThreadedServer(ServerConfig(models=lstm_path.parent.parent, port=0, metrics_port=0, poll_interval=0))
    yield server
    server.stop()


def test_remote_stream_q_values_equal_a_manual_rollout(served_lstm: ThreadedServer, lstm_path: Path) -> None:
    """Through the server's StreamEpisode the LSTM state advances every step (the server keeps it)."""
    brain = RemoteBrain(served_lstm.target)
    try:
        session = ViewerSession(brain, SessionSettings(model="lstm", num_envs=2, seed=11))
        started = session.start()
        assert (started["source"], started["model"], started["version"]) == ("remote", "lstm", 7)
        assert [m["name"] for m in started["models"]] == ["lstm", "mlp"]
        assert started["layout_source"] == "trained"  # redrawn from the served level and seed
        frames = run_frames(session, 200)
        assert served_lstm.sessions() == 1
        session.close()
        expected = manual_rollout(lstm_path, 200, 2, seed=11)
        assert any(f["finished"] for f in frames)
        for t, frame in enumerate(frames):
            np.testing.assert_allclose([e["q_values"] for e in frame["envs"]], expected[t], atol=1e-4)
            assert (frame["model"], frame["version"]) == ("lstm", 7)
    finally:
        brain.close()


def test_switching_level_restarts_and_bad_settings_keep_the_old(lstm_path: Path) -> None:
    session = ViewerSession(LocalBrain(lstm_path), SessionSettings(num_envs=1))
    session.start()
    run_frames(session, 3)
    with pytest.raises(ViewerConfigError, match="level L1 has observations 91 wide"):
        session.configure({"level": "L1"})
    with pytest.raises(ViewerConfigError, match="envs must be in"):
        session.configure({"num_envs": 99})
    assert session.settings.level == "L2" and session.settings.num_envs == 1
    message = session.configure({"level": "L3", "num_envs": 2})
    assert message["level"]["temporal"] and len(message["envs"]) == 2
    frame = run_frames(session, 1)[0]
    assert all(env["time_of_day"] == 1 for env in frame["envs"])  # L3 has a clock; the episode restarted
    session.configure({"epsilon": 0.5})
    assert session.settings.level == "L3"  # epsilon alone does not restart
    assert frame["tick"] == 4


def test_follow_latest_switches_to_a_newer_version(tmp_path: Path) -> None:
    folder = tmp_path / "mlp-run"
    write_checkpoint(folder, "mlp", 10, torch_seed=0)
    session = ViewerSession(LocalBrain(folder), SessionSettings(num_envs=1))
    assert session.start()["version"] == 10
    write_checkpoint(folder, "mlp", 20, torch_seed=1)
    message = session.configure({"follow_latest": True})
    assert message["version"] == 20 and message["models"][0]["versions"] == [10, 20]
    assert run_frames(session, 1)[0]["version"] == 20
    pinned = session.configure({"version": 10})
    assert pinned["version"] == 10 and not pinned["follow_version"] and not pinned["follow_latest"]


def test_trained_layout_from_server_metadata_matches_the_checkpoint() -> None:
    level = get_level("L1")
    drawn = VectorTownletEnv("L1", 1, seed=0).affordance_positions()
    assert trained_layout({"level": "L1", "seed": "0", "relayout": "false"}, level) == drawn
    recorded = {name: [x, y] for name, (x, y) in drawn.items()}
    assert trained_layout({"level": "L1", "affordance_layout": recorded, "seed": 99}, level) == drawn
    assert trained_layout({"level": "L1", "seed": "0", "relayout": "true"}, level) is None
    assert trained_layout({"level": "L2", "seed": "0"}, level) is None  # trained on another level
    assert trained_layout({}, level) is None


def test_choose_level() -> None:
    assert choose_level(54, None, {}).name == "L2"
    assert choose_level(54, None, {"level": "L3"}).name == "L3"
    assert choose_level(91, "L1_full_observability", {}).name == "L1"
    with pytest.raises(ViewerConfigError, match="no Townlet level has observations 7 wide"):
        choose_level(7, None, {})
    with pytest.raises(ViewerConfigError, match="unknown level"):
        choose_level(54, "L9", {})


def test_random_baseline_starts_from_the_episode_start_and_is_reproducible() -> None:
    level = get_level("L1")
    env = VectorTownletEnv(level, 3, seed=4)
    env.reset()
    start = select_env(env.get_state(), 1)
    first = random_survival(level, start, 6, np.random.default_rng(0))
    again = random_survival(level, start, 6, np.random.default_rng(0))
    np.testing.assert_array_equal(first, again)
    assert first.shape == (6,) and (first >= 1).all() and (first <= level.max_steps_per_episode).all()
    assert first.std() > 0  # different random episodes from one start


def test_token_file_reaches_a_protected_server(mlp_path: Path, tmp_path: Path) -> None:
    from hamlet_client import UnauthenticatedError
    from hamlet_viewer.cli import brain_from_args, build_parser

    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    server = ThreadedServer(
        ServerConfig(models=mlp_path.parent.parent, port=0, metrics_port=0, poll_interval=0, token_file=str(token_file))
    )
    try:
        without = brain_from_args(build_parser().parse_args(["--target", server.target]))
        with pytest.raises(UnauthenticatedError):
            ViewerSession(without, SessionSettings()).start()
        without.close()
        brain = brain_from_args(build_parser().parse_args(["--target", server.target, "--token-file", str(token_file)]))
        session = ViewerSession(brain, SessionSettings())
        assert session.start()["model"] == "mlp"
        assert run_frames(session, 2)[-1]["tick"] == 2
        session.close()
        brain.close()
    finally:
        server.stop()


def test_a_stream_the_server_dropped_is_reopened(mlp_path: Path) -> None:
    """A page paused past the server's --session-ttl: the next step reopens the stream and says so."""
    server = ThreadedServer(
        ServerConfig(models=mlp_path.parent.parent, port=0, metrics_port=0, poll_interval=0, session_ttl=0.2)
    )
    brain = RemoteBrain(server.target)
    try:
        session = ViewerSession(brain, SessionSettings(num_envs=2))
        session.start()
        run_frames(session, 2)
        deadline = time.monotonic() + 30
        while server.sessions():  # the server frees the idle stream
            assert time.monotonic() < deadline, "the server kept an idle stream past its TTL"
            time.sleep(0.05)
        error, restarted = session.step()
        assert error["type"] == "error" and "reopened" in error["message"]
        assert error["recovered"] is True  # a notice of something repaired: the page shows it amber, not red
        assert restarted["type"] == "session" and [env["step"] for env in restarted["envs"]] == [0, 0]
        assert run_frames(session, 1)[0]["envs"][0]["step"] == 1
        session.close()
    finally:
        brain.close()
        server.stop()
