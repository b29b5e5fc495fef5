"""Helpers of the hamlet_server integration tests: seeded models, tensor <-> proto, request builders, snapshots,
the server's CLI as a process.

A module of its own (not conftest) so that test files import it by a unique name.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import tensor_pb2
from hamlet_server.snapshot_keys import read_snapshot_keys
from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.inference import HamletModel, save_inference_checkpoint
from townlet.inference.filenames import inference_checkpoint_name

torch.set_num_threads(1)

MLP = "mlp"
LSTM = "lstm"
OBS_DIM = {MLP: 91, LSTM: 54}
HIDDEN = 256


def make_model(kind: str, seed: int) -> HamletModel:
    torch.manual_seed(seed)
    if kind == MLP:
        return HamletModel(SimpleQNetwork(obs_dim=91, action_dim=6))
    return HamletModel(
        RecurrentSpatialQNetwork(action_dim=6, window_size=5, num_meters=8, num_affordance_types=14, hidden_dim=HIDDEN)
    )


def write_model(root: Path, name: str, kind: str, episode: int, seed: int) -> Path:
    """Save a seeded model as `<root>/<name>/model_ep<episode>.pt`."""
    path = root / name / inference_checkpoint_name(episode)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_inference_checkpoint(make_model(kind, seed), path, metadata={"episode": episode, "untrained": True})
    return path


def enc(array: np.ndarray) -> tensor_pb2.Tensor:
    """numpy -> hamlet.v1.Tensor (float32, int64 or bool)."""
    array = np.ascontiguousarray(array)
    dtype = {
        np.dtype(np.float32): tensor_pb2.DATA_TYPE_FLOAT32,
        np.dtype(np.int64): tensor_pb2.DATA_TYPE_INT64,
        np.dtype(np.bool_): tensor_pb2.DATA_TYPE_BOOL,
    }[array.dtype]
    return tensor_pb2.Tensor(shape=list(array.shape), dtype=dtype, data=array.tobytes())


def dec(msg: tensor_pb2.Tensor) -> np.ndarray:
    """hamlet.v1.Tensor (float32) -> numpy."""
    assert msg.dtype == tensor_pb2.DATA_TYPE_FLOAT32
    return np.frombuffer(msg.data, dtype="<f4").reshape(tuple(msg.shape))


def obs_batch(kind: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random((batch, OBS_DIM[kind]), dtype=np.float32)


def start_msg(model: str, num_envs: int, **kw: Any) -> pb.StreamEpisodeRequest:
    return pb.StreamEpisodeRequest(start=pb.EpisodeStart(model=model, num_envs=num_envs, **kw))


def step_msg(obs: np.ndarray, reset: list[bool] | None = None, **kw: Any) -> pb.StreamEpisodeRequest:
    return pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=enc(obs), reset=reset or [], **kw))


async def read_to_end(call: Any) -> tuple[list[pb.StreamEpisodeResponse], Any]:
    """Read a stream until it ends: (responses, the AioRpcError it ended with, or None for OK)."""
    import grpc

    responses = []
    try:
        while (response := await call.read()) is not grpc.aio.EOF:
            responses.append(response)
    except grpc.aio.AioRpcError as error:
        return responses, error
    return responses, None


def assert_ended(response: pb.StreamEpisodeResponse, reason: str, code: Any, error_reason: str = "") -> None:
    """`response` is the server's in-band EpisodeEnded with this reason (``idle_timeout``), code, error reason."""
    assert response.WhichOneof("kind") == "ended", response
    ended = response.ended
    assert pb.EndReason.Name(ended.reason) == f"END_REASON_{reason.upper()}", ended
    assert ended.status_code == code.value[0], ended
    if error_reason:
        assert ended.error_reason == error_reason, ended


def seal(state: pb.EpisodeState, key_file: Path | None = None) -> pb.EpisodeSnapshot:
    """A snapshot of ``state`` with a right checksum, signed as a server with ``key_file`` would sign it (with
    none: unsigned), so a test can hand a server a state no server took."""
    payload = state.SerializeToString(deterministic=True)
    keys = read_snapshot_keys(str(key_file)) if key_file is not None else None
    mac = keys.sign(payload) if keys is not None else b""
    return pb.EpisodeSnapshot(state=payload, checksum=hashlib.sha256(payload).digest(), mac=mac)


ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def cli_server(
    model_dir: Path, *flags: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`hamlet-server serve FLAGS` as a process serving ``model_dir`` on a free loopback port (no /metrics);
    yields ``(process, "127.0.0.1:PORT")`` once it printed READY, and kills it on the way out if it still runs."""
    environ = {**os.environ, "HAMLET_MODELS": str(model_dir), "HAMLET_METRICS_PORT": "0", "HAMLET_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hamlet_server.cli", "serve", *flags], env={**environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("READY 127.0.0.1:"), line + proc.stderr.read()
        yield proc, line.split()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
