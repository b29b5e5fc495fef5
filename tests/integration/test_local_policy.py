"""Local inference (`HamletClient.local_policy`) against the REAL server: same actions and Q as remote.

The server runs the PyTorch backend, so "remote" is the checkpoint's own PyTorch forward and "local" the
ONNX export the server hands out (GetModelArtifact), run by onnxruntime in this process. They must agree
within the ONNX tolerance of docs/MODEL_EXPORT.md (|local - remote| <= 1e-5 + 1e-5 |remote|, element-wise)
over rollouts of the reference simulator that restart environments as they die (LSTM state reset per
environment), and choose the same actions wherever the remote Q-values are not a near-tie.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from demo_models import DEMO_L1, DEMO_L2, version_of
from hamlet_runs import write_training_checkpoint
from live_server import ThreadedServer
from server_helpers import MLP, write_model

from hamlet_client import (
    ArtifactIntegrityError,
    FailedPreconditionError,
    HamletClient,
    InvalidArgumentError,
    ModelNotFoundError,
    UnauthenticatedError,
)
from hamlet_client.proto import inference_service_pb2 as pb
from townlet.env import VectorTownletEnv
from townlet.inference import HamletModel
from townlet.inference.validation import ONNX_ATOL, ONNX_RTOL

STEPS = 50
NUM_ENVS = 4


@pytest.fixture
def serve(threaded_server_factory: Callable[..., ThreadedServer]) -> Callable[..., ThreadedServer]:
    """``serve(models, **settings)``: the shared threaded server on another model repository."""
    return lambda models, **overrides: threaded_server_factory(models=models, **overrides)


def _assert_close(local: np.ndarray, remote: np.ndarray) -> None:
    bound = ONNX_ATOL + ONNX_RTOL * np.abs(remote)
    worst = float((np.abs(local - remote) / bound).max())
    assert worst <= 1.0, f"local Q differs from remote by {worst:.2f}x the ONNX tolerance"


def _same_actions(local: np.ndarray, remote: np.ndarray, remote_q: np.ndarray, masks: np.ndarray) -> int:
    """Assert equal actions except on near-ties of the remote Q (top two allowed within the tolerance);
    returns how many rows were near-ties."""
    q = np.where(masks, remote_q, -np.inf)
    top2 = np.sort(q, axis=1)[:, -2:]
    tie = (top2[:, 1] - top2[:, 0]) <= 2 * (ONNX_ATOL + ONNX_RTOL * np.abs(top2[:, 1]))
    assert (local[~tie] == remote[~tie]).all(), f"actions differ: local {local}, remote {remote}"
    return int(tie.sum())


def _rollout_compare(client: HamletClient, model: str, level: str) -> tuple[int, int]:
    """``STEPS`` env steps of ``NUM_ENVS`` environments driven by the remote episode's actions, the local episode
    fed the same observations, masks and resets. Returns (steps compared, resets seen)."""
    policy = client.local_policy(model)
    env = VectorTownletEnv(level, NUM_ENVS, seed=11)
    obs = env.reset(seed=11)
    reset = np.ones(NUM_ENVS, dtype=bool)
    resets = ties = 0
    with client.episode(model, num_envs=NUM_ENVS) as remote, policy.episode(num_envs=NUM_ENVS) as local:
        assert (local.model, local.version) == (remote.model, remote.version)
        for _ in range(STEPS):
            masks = env.action_masks()
            want = remote.step(obs, reset=reset, action_mask=masks)
            got = local.step(obs, reset=reset, action_mask=masks)
            _assert_close(got.q_values, want.q_values)
            ties += _same_actions(got.actions, want.actions, want.q_values, masks)
            assert (got.step_index, got.model, got.version) == (want.step_index, want.model, want.version)
            obs, _, done, info = env.step(want.actions)
            reset = done | info["truncated"]
            if reset.any():
                resets += int(reset.sum())
                obs = env.reset_envs(reset)
    assert ties <= STEPS * NUM_ENVS // 20, f"{ties} near-ties: the comparison says little"
    return STEPS, resets


@pytest.mark.slow  # exports and verifies each network on the server (~2 s each on 2 cores)
@pytest.mark.parametrize(("checkpoint", "level"), [(DEMO_L1, "L1"), (DEMO_L2, "L2")], ids=["L1-mlp", "L2-lstm"])
def test_local_and_remote_agree_over_a_rollout_of_the_demo_models(
    serve: Callable[..., ThreadedServer], tmp_path: Path, checkpoint: Path, level: str
) -> None:
    shutil.copytree(checkpoint.parent, tmp_path / "models" / "demo")
    server = serve(tmp_path / "models")
    with HamletClient(server.target, timeout=60) as client:
        steps, _ = _rollout_compare(client, "demo", level)
        assert steps == STEPS
        policy = client.local_policy("demo")
        assert policy.version == version_of(checkpoint)
        assert policy.metadata.sha256 == HamletModel.load(checkpoint).metadata["sha256"]  # the checkpoint's own


@pytest.mark.slow  # exports and verifies both networks on the server
@pytest.mark.parametrize(("network_type", "level"), [("simple", "L1"), ("recurrent", "L2")])
def test_local_and_remote_agree_on_a_hamlet_training_checkpoint(
    serve: Callable[..., ThreadedServer], tmp_path: Path, network_type: str, level: str
) -> None:
    write_training_checkpoint(tmp_path / "models" / "hamlet", network_type, episode=300, seed=4)
    server = serve(tmp_path / "models")
    with HamletClient(server.target, timeout=60) as client:
        _rollout_compare(client, "hamlet", level)
        # Stateless predict too: explicit hidden state in and out, as HamletClient.predict.
        policy = client.local_policy("hamlet")
        obs = np.random.default_rng(0).random((3, policy.obs_dim), dtype=np.float32)
        want, got = client.predict(obs, model="hamlet"), policy.predict(obs)
        _assert_close(got.q_values, want.q_values)
        assert (got.model, got.version) == (want.model, want.version) == ("hamlet", 300)
        if policy.recurrent:
            want2 = client.predict(obs, model="hamlet", hidden=want.hidden)
            got2 = policy.predict(obs, hidden=got.hidden)
            _assert_close(got2.q_values, want2.q_values)
        else:
            assert got.hidden is None and want.hidden is None


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_a_new_version_is_followed_between_episodes(serve: Callable[..., ThreadedServer], tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "agent", MLP, 1, seed=0)
    server = serve(root)
    obs = np.random.default_rng(1).random((2, 91), dtype=np.float32)
    v1 = HamletModel.load(root / "agent" / "model_ep00001.pt").predict(obs).q_values
    with HamletClient(server.target, timeout=60) as client:
        policy = client.local_policy("agent", poll_interval=0)  # check at every episode start
        running = policy.episode(num_envs=2)
        assert running.step(obs).version == 1
        write_model(root, "agent", MLP, 2, seed=5)  # training writes a new checkpoint while serving
        v2 = HamletModel.load(root / "agent" / "model_ep00002.pt").predict(obs).q_values
        _wait_for(lambda: client.metadata("agent").version == 2)

        step = running.step(obs)  # the running episode keeps its version
        assert step.version == 1
        _assert_close(step.q_values, v1)
        running.close()
        with policy.episode(num_envs=2) as episode:  # the next one moves to the new version
            step = episode.step(obs)
        assert (step.version, policy.version, policy.switches) == (2, 2, 1)
        _assert_close(step.q_values, v2)

        pinned = client.local_policy("agent", version=1, poll_interval=0)
        with pinned.episode(num_envs=2) as episode:
            assert episode.step(obs).version == 1


def _tampering(stub_method: Any, chunk_index: int = 0) -> Callable[..., Any]:
    """A GetModelArtifact that flips one byte of the ``chunk_index``-th chunk, as a corrupting proxy would."""

    def call(request: Any, **kwargs: Any) -> Any:
        class Call:
            def __init__(self) -> None:
                self._inner = stub_method(request, **kwargs)

            def __iter__(self) -> Iterator[pb.GetModelArtifactResponse]:
                chunks = 0
                for response in self._inner:
                    if response.WhichOneof("kind") == "chunk":
                        if chunks == chunk_index:
                            data = bytearray(response.chunk.data)
                            data[len(data) // 2] ^= 0x01
                            response.chunk.data = bytes(data)
                        chunks += 1
                    yield response

            def cancel(self) -> None:
                self._inner.cancel()

        return Call()

    return call


def test_a_tampered_artifact_is_refused(serve: Callable[..., ThreadedServer], model_dir: Path) -> None:
    server = serve(model_dir)
    with HamletClient(server.target, timeout=60) as client:
        honest = client._stub.GetModelArtifact
        client._stub.GetModelArtifact = _tampering(honest)
        with pytest.raises(ArtifactIntegrityError, match="sha256") as caught:
            client.local_policy("lstm")
        assert caught.value.code == grpc.StatusCode.DATA_LOSS
        client._stub.GetModelArtifact = honest
        assert client.local_policy("lstm").recurrent  # the same fetch, untouched, is accepted


def test_artifact_stream_is_chunked_with_the_file_metadata(
    serve: Callable[..., ThreadedServer], model_dir: Path
) -> None:
    server = serve(model_dir)
    with grpc.insecure_channel(server.target) as channel:
        from hamlet_client.stub import InferenceStub

        stub = InferenceStub(channel)
        responses = list(stub.GetModelArtifact(pb.GetModelArtifactRequest(model="lstm", chunk_bytes=256 * 1024)))
    info = responses[0].info
    chunks = [r.chunk for r in responses[1:]]
    assert (info.model, info.version, info.recurrent, info.obs_dim, info.action_dim, info.hidden_dim) == (
        "lstm", 0, True, 54, 6, 256,
    )  # fmt: skip
    assert list(info.input_names) == ["obs", "hidden_h", "hidden_c"]
    assert list(info.output_names) == ["q_values", "new_hidden_h", "new_hidden_c"]
    assert (info.atol, info.rtol) == (ONNX_ATOL, ONNX_RTOL)
    assert info.metadata.name == "lstm" and info.metadata.obs_dim == 54
    assert len(chunks) == -(-info.size_bytes // (256 * 1024)) > 1
    assert all(len(c.data) == 256 * 1024 for c in chunks[:-1])
    assert [c.offset for c in chunks] == [i * 256 * 1024 for i in range(len(chunks))]


def test_artifact_errors_are_typed(serve: Callable[..., ThreadedServer], model_dir: Path) -> None:
    server = serve(model_dir)
    with HamletClient(server.target, timeout=60) as client:
        with pytest.raises(ModelNotFoundError, match="unknown model 'nope'") as caught:
            client.local_policy("nope")
        assert caught.value.reason == "UNKNOWN_MODEL"
        with pytest.raises(ModelNotFoundError, match="has no version 7") as caught:
            client.local_policy("mlp", version=7)
        assert caught.value.reason == "UNKNOWN_VERSION"
    with grpc.insecure_channel(server.target) as channel:
        from hamlet_client.stub import InferenceStub

        with pytest.raises(grpc.RpcError) as rpc:
            list(InferenceStub(channel).GetModelArtifact(pb.GetModelArtifactRequest(model="mlp", chunk_bytes=10)))
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk_bytes: expected 0 (the default" in rpc.value.details()


def test_artifacts_need_the_token(serve: Callable[..., ThreadedServer], model_dir: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = serve(model_dir, token_file=str(token_file), poll_interval=0)
    for token in (None, "wrong"):
        with (
            HamletClient(server.target, token=token, timeout=30) as client,
            pytest.raises(UnauthenticatedError, match="bearer token"),
        ):
            client.local_policy("mlp")
    with HamletClient(server.target, token="s3cret-token", timeout=30) as client:
        assert client.local_policy("mlp").obs_dim == 91


def test_the_onnx_backend_hands_out_the_export_it_verified_at_load(
    serve: Callable[..., ThreadedServer], model_dir: Path
) -> None:
    server = serve(model_dir, backend="onnx")
    with HamletClient(server.target, timeout=60) as client:
        policy = client.local_policy("lstm")
        obs = np.random.default_rng(2).random((3, 54), dtype=np.float32)
        remote = client.predict(obs, model="lstm")
        np.testing.assert_array_equal(policy.predict(obs).q_values, remote.q_values)  # the same graph, same runtime
    assert server.server.servicer.artifacts.exports == 0  # nothing exported again


def test_local_input_errors_match_the_remote_ones(serve: Callable[..., ThreadedServer], model_dir: Path) -> None:
    server = serve(model_dir)
    with HamletClient(server.target, timeout=60) as client:
        policy = client.local_policy("mlp", poll_interval=0)
        for bad in (np.zeros((2, 90), np.float32), np.full((1, 91), np.nan, np.float32)):
            with pytest.raises(InvalidArgumentError):
                client.predict(bad, model="mlp")
            with pytest.raises(InvalidArgumentError):
                policy.predict(bad)
        with policy.episode(num_envs=2) as episode:
            with pytest.raises(InvalidArgumentError, match=r"expected one observation per environment"):
                episode.step(np.zeros((3, 91), np.float32))
            assert episode.step(np.zeros((2, 91), np.float32)).step_index == 0  # still usable
        with pytest.raises(FailedPreconditionError, match="closed"):
            episode.step(np.zeros((2, 91), np.float32))
    with pytest.raises(FailedPreconditionError, match="the client is closed"):
        client.local_policy("mlp")
    # The policy runs on without the server: its version checks fail (logged) and it keeps its version.
    with policy.episode(num_envs=1) as episode:
        assert episode.step(np.zeros(91, np.float32)).version == 0
