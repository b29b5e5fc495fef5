"""`hamlet_client.artifacts` and `hamlet_client.local` without a server: the artifact checks, the policy's
numbers against the PyTorch model, the server's epsilon-greedy rule, resets, and following versions."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from hamlet_client.artifacts import ARTIFACT_FORMAT, ModelArtifact, assemble_artifact
from hamlet_client.errors import ArtifactIntegrityError, FailedPreconditionError, InvalidArgumentError, UnavailableError
from hamlet_client.local import LocalPolicy, OnnxRunner, epsilon_greedy
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import model_pb2
from hamlet_client.results import metadata_from_proto
from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.inference import HamletModel
from townlet.inference.onnx_export import export_to_onnx
from townlet.inference.onnx_runtime import epsilon_greedy_numpy

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _model(kind: str, seed: int) -> HamletModel:
    torch.manual_seed(seed)
    if kind == "mlp":
        return HamletModel(SimpleQNetwork(obs_dim=91, action_dim=6))
    return HamletModel(RecurrentSpatialQNetwork(action_dim=6, hidden_dim=32))


def _artifact(model: HamletModel, tmp_path: Path, version: int = 1, name: str = "m") -> ModelArtifact:
    path = export_to_onnx(model, tmp_path / f"{name}-{version}.onnx")
    data = path.read_bytes()
    hidden = model.hidden_dim or 0
    return ModelArtifact(
        model=name, version=version, format=ARTIFACT_FORMAT, sha256=hashlib.sha256(data).hexdigest(), data=data,
        obs_dim=model.obs_dim, action_dim=model.action_dim, hidden_dim=hidden, atol=1e-5, rtol=1e-5,
        input_names=("obs", "hidden_h", "hidden_c") if hidden else ("obs",),
        output_names=("q_values", "new_hidden_h", "new_hidden_c") if hidden else ("q_values",),
        metadata=metadata_from_proto(model_pb2.ModelMetadata(name=name, version=version)), verification="",
    )  # fmt: skip


def _responses(artifact: ModelArtifact, chunk: int = 4096) -> list[pb.GetModelArtifactResponse]:
    info = pb.ModelArtifactInfo(
        model=artifact.model, version=artifact.version, format=artifact.format, sha256=artifact.sha256,
        size_bytes=len(artifact.data), obs_dim=artifact.obs_dim, action_dim=artifact.action_dim,
        hidden_dim=artifact.hidden_dim, recurrent=artifact.recurrent, atol=1e-5, rtol=1e-5,
        input_names=artifact.input_names, output_names=artifact.output_names,
    )  # fmt: skip
    out = [pb.GetModelArtifactResponse(info=info)]
    for offset in range(0, len(artifact.data), chunk):
        piece = pb.ModelArtifactChunk(offset=offset, data=artifact.data[offset : offset + chunk])
        out.append(pb.GetModelArtifactResponse(chunk=piece))
    return out


@pytest.fixture
def mlp_artifact(tmp_path: Path) -> ModelArtifact:
    return _artifact(_model("mlp", 0), tmp_path)


# ---------------------------------------------------------------------------- the artifact checks


def test_an_intact_stream_assembles(mlp_artifact: ModelArtifact) -> None:
    got = assemble_artifact(_responses(mlp_artifact))
    assert (got.data, got.sha256, got.obs_dim, got.recurrent) == (mlp_artifact.data, mlp_artifact.sha256, 91, False)


def test_a_flipped_byte_is_refused(mlp_artifact: ModelArtifact) -> None:
    responses = _responses(mlp_artifact)
    data = bytearray(responses[2].chunk.data)
    data[7] ^= 0x80
    responses[2].chunk.data = bytes(data)
    with pytest.raises(ArtifactIntegrityError, match=r"hash to sha256 .* the server announced"):
        assemble_artifact(responses)


def test_missing_reordered_or_extra_bytes_are_refused(mlp_artifact: ModelArtifact) -> None:
    responses = _responses(mlp_artifact)
    with pytest.raises(ArtifactIntegrityError, match="expected the info message first"):
        assemble_artifact(responses[1:])
    with pytest.raises(ArtifactIntegrityError, match="a chunk starts at byte 8192, expected 4096"):
        assemble_artifact([responses[0], responses[1], responses[3], responses[2], *responses[4:]])
    with pytest.raises(ArtifactIntegrityError, match=r"bytes arrived"):
        assemble_artifact(responses[:-1])
    extra = pb.GetModelArtifactResponse(chunk=pb.ModelArtifactChunk(offset=len(mlp_artifact.data), data=b"x"))
    with pytest.raises(ArtifactIntegrityError, match="more than the announced"):
        assemble_artifact([*responses, extra])
    with pytest.raises(ArtifactIntegrityError, match="expected only chunks after the info"):
        assemble_artifact([*responses, responses[0]])
    responses[0].info.format = "pickle"
    with pytest.raises(ArtifactIntegrityError, match="format 'pickle'"):
        assemble_artifact(responses)


def test_a_file_that_is_not_the_announced_model_is_refused(mlp_artifact: ModelArtifact, tmp_path: Path) -> None:
    from dataclasses import replace

    with pytest.raises(ArtifactIntegrityError, match="obs_dim '91' in the file, '54' announced"):
        OnnxRunner(replace(mlp_artifact, obs_dim=54))
    with pytest.raises(ArtifactIntegrityError, match="onnxruntime cannot load it"):
        OnnxRunner(replace(mlp_artifact, data=b"not an onnx file"))
    with pytest.raises(ArtifactIntegrityError, match="the graph has inputs"):
        OnnxRunner(replace(mlp_artifact, input_names=("obs", "hidden_h", "hidden_c")))


# ---------------------------------------------------------------------------- the numbers


def test_local_episode_matches_the_pytorch_model_with_resets(tmp_path: Path) -> None:
    model = _model("lstm", 3)
    policy = LocalPolicy(lambda name, v: _artifact(model, tmp_path), lambda name: 1, poll_interval=None)
    rng = np.random.default_rng(0)
    hidden = None
    with policy.episode(num_envs=3) as episode:
        for index in range(6):
            obs = rng.random((3, model.obs_dim), dtype=np.float32)
            reset = np.array([index == 3, False, index == 4])
            start = torch.from_numpy(reset) if index else None
            want = model.predict(torch.from_numpy(obs), hidden, episode_start=start)
            hidden = want.hidden
            step = episode.step(obs, reset=reset)
            np.testing.assert_allclose(step.q_values, want.q_values.numpy(), **TOL)
            np.testing.assert_array_equal(step.actions, want.actions.numpy())
            assert (step.step_index, step.model, step.version) == (index, "m", 1)
    with pytest.raises(FailedPreconditionError, match="closed"):
        episode.step(obs)


def test_local_predict_carries_hidden_state_like_the_server(tmp_path: Path) -> None:
    model = _model("lstm", 4)
    policy = LocalPolicy(lambda name, v: _artifact(model, tmp_path), lambda name: 1, poll_interval=None)
    obs = np.random.default_rng(1).random((2, model.obs_dim), dtype=np.float32)
    first = policy.predict(obs)
    second = policy.predict(obs, hidden=first.hidden)
    want = model.predict(torch.from_numpy(obs), model.predict(torch.from_numpy(obs)).hidden)
    np.testing.assert_allclose(second.q_values, want.q_values.numpy(), **TOL)
    assert first.hidden is not None and first.hidden[0].shape == (1, 2, 32)
    with pytest.raises(InvalidArgumentError, match=r"hidden h: expected shape \[1, 2, 32\]"):
        policy.predict(obs, hidden=(np.zeros((1, 3, 32)), np.zeros((1, 3, 32))))


def test_epsilon_greedy_is_the_servers_rule() -> None:
    rng = np.random.default_rng(5)
    q = rng.standard_normal((400, 6)).astype(np.float32)
    mask = rng.random((400, 6)) < 0.5
    mask[np.arange(400), rng.integers(0, 6, 400)] = True
    for eps in (0.0, 0.3, 1.0):
        ours = epsilon_greedy(q, eps, mask, np.random.default_rng(9))
        theirs = epsilon_greedy_numpy(q, eps, mask, np.random.default_rng(9))  # the onnx backend's twin of torch's
        np.testing.assert_array_equal(ours, theirs)
        assert mask[np.arange(400), ours].all()  # explored actions respect the mask too
    greedy = epsilon_greedy(q, 0.0, mask, None)
    np.testing.assert_array_equal(greedy, np.where(mask, q, -np.inf).argmax(axis=1))


def test_a_seeded_episode_explores_reproducibly(mlp_artifact: ModelArtifact) -> None:
    policy = LocalPolicy(lambda name, v: mlp_artifact, lambda name: 1, poll_interval=None)
    obs = np.random.default_rng(2).random((8, 91), dtype=np.float32)
    runs = []
    for _ in range(2):
        with policy.episode(num_envs=8, epsilon=0.5, seed=42) as episode:
            runs.append([episode.step(obs).actions.tolist() for _ in range(5)])
    assert runs[0] == runs[1]
    greedy = policy.predict(obs).actions.tolist()
    assert any(actions != greedy for actions in runs[0])


# ---------------------------------------------------------------------------- following versions


class _Server:
    """A fake server: ``latest`` changes when a test says so; ``fetch`` counts calls."""

    def __init__(self, tmp_path: Path) -> None:
        self.models = {1: _model("mlp", 1), 2: _model("mlp", 2)}
        self.latest_version = 1
        self.fetches: list[tuple[str, int | None]] = []
        self.down = False
        self.tmp_path = tmp_path

    def fetch(self, name: str, version: int | None) -> ModelArtifact:
        self.fetches.append((name, version))
        chosen = self.latest_version if version is None else version
        return _artifact(self.models[chosen], self.tmp_path, version=chosen, name="agent")

    def latest(self, name: str) -> int:
        if self.down:
            raise UnavailableError("connection refused")
        return self.latest_version


def test_new_versions_are_followed_between_episodes_on_the_poll_interval(tmp_path: Path) -> None:
    server, now = _Server(tmp_path), [0.0]
    policy = LocalPolicy(server.fetch, server.latest, "agent", poll_interval=10.0, clock=lambda: now[0])
    obs = np.random.default_rng(3).random((2, 91), dtype=np.float32)
    running = policy.episode(num_envs=2)
    server.latest_version = 2
    now[0] = 5.0
    assert policy.episode(num_envs=2).version == 1  # not due yet
    now[0] = 10.0
    fresh = policy.episode(num_envs=2)
    assert (fresh.version, policy.version, policy.switches) == (2, 2, 1)
    assert server.fetches == [("agent", None), ("agent", 2)]
    step = running.step(obs)  # the running episode stays on version 1, with version 1's numbers
    assert step.version == 1
    np.testing.assert_allclose(step.q_values, server.models[1].predict(obs).q_values, **TOL)
    np.testing.assert_allclose(fresh.step(obs).q_values, server.models[2].predict(obs).q_values, **TOL)


def test_a_failed_check_keeps_the_current_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server, now = _Server(tmp_path), [0.0]
    policy = LocalPolicy(server.fetch, server.latest, "agent", poll_interval=1.0, clock=lambda: now[0])
    server.down, now[0] = True, 2.0
    with caplog.at_level(logging.WARNING, logger="hamlet_client.local"):
        assert policy.episode().version == 1
    assert "staying on version 1, the version check failed: connection refused" in caplog.text


def test_a_pinned_version_never_polls(tmp_path: Path) -> None:
    server, now = _Server(tmp_path), [0.0]
    policy = LocalPolicy(server.fetch, server.latest, "agent", version=1, poll_interval=0, clock=lambda: now[0])
    server.latest_version, now[0] = 2, 100.0
    assert policy.episode().version == 1 and not policy.refresh()
    assert server.fetches == [("agent", 1)]


def test_bad_arguments_say_what_was_expected(mlp_artifact: ModelArtifact) -> None:
    with pytest.raises(InvalidArgumentError, match="poll_interval: expected seconds >= 0"):
        LocalPolicy(lambda name, v: mlp_artifact, lambda name: 1, poll_interval=-1)
    policy = LocalPolicy(lambda name, v: mlp_artifact, lambda name: 1)
    with pytest.raises(InvalidArgumentError, match="num_envs: expected an int >= 1"):
        policy.episode(num_envs=0)
    with pytest.raises(InvalidArgumentError, match="obs: expected 91 features per observation for model 'm', got 90"):
        policy.predict(np.zeros(90, np.float32))
    with pytest.raises(InvalidArgumentError, match="action_mask: row"):
        policy.predict(np.zeros(91, np.float32), action_mask=np.zeros(6, bool))
    with pytest.raises(InvalidArgumentError, match="hidden: this model is feed-forward"):
        policy.predict(np.zeros(91, np.float32), hidden=(np.zeros((1, 1, 4)), np.zeros((1, 1, 4))))
    with pytest.raises(InvalidArgumentError, match="epsilon"):
        policy.predict(np.zeros(91, np.float32), epsilon=2.0)


def test_an_artifact_of_another_model_or_version_is_refused(mlp_artifact: ModelArtifact) -> None:
    with pytest.raises(ArtifactIntegrityError, match="asked for model 'other' version latest, the server sent 'm'"):
        LocalPolicy(lambda name, v: mlp_artifact, lambda name: 1, "other")
    with pytest.raises(ArtifactIntegrityError, match="asked for model 'm' version 7, the server sent 'm' version 1"):
        LocalPolicy(lambda name, v: mlp_artifact, lambda name: 1, "m", version=7)
    assert LocalPolicy(lambda name, v: mlp_artifact, lambda name: 1, "").model == "m"  # "" is the default model
