"""Serving only what is right, through a real server: a diverged (NaN) newest checkpoint is never served, a
good new version is served within one poll, deleting it rolls back within one poll, health follows what is
servable (overall and per model), and the onnx backend serves the trained demo models with the torch
backend's greedy actions."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_helpers import MLP, dec, enc, obs_batch, write_model

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_server.server import LIVENESS_NAME, HamletServer, model_health_name
from townlet.agent.networks import SimpleQNetwork
from townlet.inference import HamletModel, save_inference_checkpoint
from townlet.inference.filenames import inference_checkpoint_name

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POLL = 0.1


def _write_nan(root: Path, name: str, episode: int) -> Path:
    network = SimpleQNetwork(obs_dim=91, action_dim=6)
    with torch.no_grad():
        for param in network.parameters():
            param.fill_(float("nan"))
    path = root / name / inference_checkpoint_name(episode)
    save_inference_checkpoint(HamletModel(network), path)
    return path


async def _health(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))).status


async def _predict(port: int, model: str, obs: np.ndarray) -> pb.PredictResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await pb_grpc.InferenceServiceStub(channel).Predict(
            pb.PredictRequest(model=model, observations=enc(obs))
        )


async def _until(condition: Callable[[], Any], timeout: float = 5.0) -> float:
    """Seconds until the async ``condition()`` is truthy (fails after ``timeout``)."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_nan_newest_is_never_served_then_forward_and_back(server_factory, model_dir: Path) -> None:
    server: HamletServer = await server_factory(poll_interval=POLL)
    obs = obs_batch(MLP, 4, np.random.default_rng(0))
    before = await _predict(server.port, MLP, obs)
    assert before.version == 0
    _write_nan(model_dir, MLP, 900)
    for _ in range(5):  # several polls: the NaN file is refused every time it is looked at, and never served
        await asyncio.sleep(POLL)
        reply = await _predict(server.port, MLP, obs)
        assert reply.version == 0 and np.isfinite(dec(reply.q_values)).all()
    assert server.metrics.load_failures.labels(MLP, "load_error")._value.get() == 1  # counted once, not re-read
    good = write_model(model_dir, MLP, MLP, 950, seed=5)

    async def on_950() -> bool:
        return (await _predict(server.port, MLP, obs)).version == 950

    await _until(on_950, timeout=POLL * 10)
    good.unlink()

    async def back_on_0() -> bool:
        return (await _predict(server.port, MLP, obs)).version == 0

    await _until(back_on_0, timeout=POLL * 10)
    np.testing.assert_array_equal(dec((await _predict(server.port, MLP, obs)).q_values), dec(before.q_values))


async def test_refused_version_is_an_explicit_error_without_paths(server_factory, model_dir: Path) -> None:
    server = await server_factory()
    _write_nan(model_dir, MLP, 7)
    await server.repository.refresh()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        request = pb.PredictRequest(model=MLP, version=7, observations=enc(np.zeros((1, 91), np.float32)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "non-finite weights" in caught.value.details() and "values are NaN" in caught.value.details()
    assert str(model_dir) not in caught.value.details() and "/tmp" not in caught.value.details()


async def test_list_models_leaves_refused_versions_out_until_their_file_changes(
    server_factory, model_dir: Path
) -> None:
    server = await server_factory()
    nan_path = _write_nan(model_dir, MLP, 900)  # the newest file: read at the next poll and refused
    await server.repository.refresh()

    async def listed() -> tuple[list[int], int]:
        """``(versions, latest_version)`` of MLP in ListModels."""
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = await pb_grpc.InferenceServiceStub(channel).ListModels(pb.ListModelsRequest())
        (summary,) = [m for m in reply.models if m.name == MLP]
        return list(summary.versions), summary.latest_version

    assert await listed() == ([0], 0)  # 900 is on disk but refused: not offered (the viewer's list comes from here)
    assert server.repository.versions_on_disk(MLP) == [0, 900]
    write_model(model_dir, MLP, MLP, 900, seed=5)  # the same version, now a good file: listed and served again
    nan_path.touch()
    await server.repository.refresh()
    assert await listed() == ([0, 900], 900)


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("this must never run",))


@pytest.mark.parametrize("zip_format", [True, False])
async def test_a_pickle_refusal_reaches_the_client_in_our_words(server_factory, model_dir: Path, zip_format) -> None:
    """No torch advice (weights_only=False, add_safe_globals), no ANSI bold, no library trust_pickle: the
    server's own fix. The legacy (non-zip) format is where torch's text used to come through."""
    server = await server_factory()
    checkpoint = {"format_version": "inference_v1", "payload": _Evil(),
                  "state_dict": SimpleQNetwork(obs_dim=91, action_dim=6).state_dict(),
                  "network_params": {"network_type": "simple", "obs_dim": 91, "action_dim": 6}}  # fmt: skip
    torch.save(checkpoint, model_dir / MLP / inference_checkpoint_name(8), _use_new_zipfile_serialization=zip_format)
    await server.repository.refresh()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        request = pb.PredictRequest(model=MLP, version=8, observations=enc(np.zeros((1, 91), np.float32)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(request)
    details = caught.value.details()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 8 is not servable: UnsafeCheckpointError: refusing to unpickle" in details
    assert "print" in details and "hamlet-model migrate --trust" in details and "nothing in it was run" in details
    for foreign in ("\x1b", "weights_only` set to `False`", "add_safe_globals", "trust_pickle=True (CLI", "/tmp"):
        assert foreign not in details, foreign


async def test_health_follows_what_is_servable(server_factory, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    (root / "a").mkdir(parents=True)
    (root / "a" / "model_ep00001.pt").write_bytes(b"not a checkpoint")
    _write_nan(root, "b", 1)
    server = await server_factory(models=root, poll_interval=POLL)
    for service in ("", "hamlet.v1.InferenceService", model_health_name("a"), model_health_name("b")):
        assert await _health(server.port, service) == NOT_SERVING, service
    assert await _health(server.port, LIVENESS_NAME) == SERVING  # alive, only not ready
    write_model(root, "a", MLP, 2, seed=0)

    async def a_serving() -> bool:
        return await _health(server.port, model_health_name("a")) == SERVING

    await _until(a_serving, timeout=POLL * 10)
    assert await _health(server.port, "") == SERVING
    assert await _health(server.port, model_health_name("b")) == NOT_SERVING
    shutil.rmtree(root / "a")

    async def nothing_left() -> bool:
        return await _health(server.port, "") == NOT_SERVING

    await _until(nothing_left, timeout=POLL * 10)
    assert await _health(server.port, model_health_name("a")) == NOT_SERVING


async def test_onnx_backend_serves_the_trained_demo_models(server_factory) -> None:
    onnx = await server_factory(models=REPO / "models", backend="onnx")
    eager = await server_factory(models=REPO / "models", backend="torch")
    assert await _health(onnx.port, "") == SERVING
    for name in ("townlet-L1-mlp", "townlet-L2-lstm"):
        assert await _health(onnx.port, model_health_name(name)) == SERVING
        obs = np.random.default_rng(3).random((256, onnx.repository.latest(name).obs_dim), dtype=np.float32)
        got, want = await _predict(onnx.port, name, obs), await _predict(eager.port, name, obs)
        q_onnx, q_torch = dec(got.q_values), dec(want.q_values)
        np.testing.assert_allclose(q_onnx, q_torch, rtol=1e-5, atol=1e-5)
        top2 = np.sort(q_torch, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-3
        assert clear.sum() >= 250
        np.testing.assert_array_equal(np.array(got.actions)[clear], np.array(want.actions)[clear])


async def test_the_default_backend_serves_the_demo_models_with_onnxruntime(server_factory) -> None:
    server = await server_factory(models=REPO / "models", backend="auto")
    assert server.backend == "onnx"
    assert server.repository.latest("townlet-L2-lstm").model.metadata["backend"] == "onnxruntime"
