"""The `Backend` surface: both backends offer every member, HamletModel.forward gives the same numbers with
and without the server's inference_mode, and the batcher runs the backend's own forward (it no longer
reaches into ``model.network``)."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from hamlet_server.array_ops import ops_for
from hamlet_server.backends import Backend, MissingTorchError, load_backend
from hamlet_server.batcher import StepBatcher, WorkItem
from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.inference import HamletModel, save_inference_checkpoint

torch.set_num_threads(1)

MEMBERS = ("obs_dim", "action_dim", "is_recurrent", "hidden_dim", "device", "num_parameters", "metadata", "forward")
ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def _lstm() -> HamletModel:
    torch.manual_seed(0)
    net = RecurrentSpatialQNetwork(action_dim=6, window_size=3, num_meters=8, num_affordance_types=14, hidden_dim=16)
    return HamletModel(net)


def test_the_protocol_names_what_the_batcher_uses() -> None:
    assert set(MEMBERS) <= set(dir(Backend))


@pytest.mark.parametrize(
    "backend", ["torch", pytest.param("onnx", marks=pytest.mark.skipif(not ONNX, reason="no onnx"))]
)
def test_each_backend_offers_every_member(tmp_path: Path, backend: str) -> None:
    path = save_inference_checkpoint(_lstm(), tmp_path / "model_ep00001.pt")
    loaded = load_backend(path, "cpu", backend)
    assert all(hasattr(loaded, name) for name in MEMBERS)
    assert (loaded.obs_dim, loaded.action_dim, loaded.is_recurrent, loaded.hidden_dim) == (38, 6, True, 16)
    assert str(loaded.device) == "cpu" and loaded.num_parameters > 0
    ops = ops_for(loaded)
    assert ops.kind == {"torch": "torch", "onnx": "numpy"}[backend]  # each backend runs on its own arrays
    q, hidden = loaded.forward(ops.from_host(np.zeros((2, loaded.obs_dim), np.float32)), None)
    assert q.shape == (2, 6) and hidden is not None and hidden[0].shape == (1, 2, 16)


@pytest.mark.skipif(not ONNX, reason="no onnx")
def test_an_onnx_file_is_served_as_exported_with_the_checkpoints_metadata(tmp_path: Path) -> None:
    from townlet.inference.onnx_export import export_verified

    model = _lstm()
    checkpoint = save_inference_checkpoint(
        model, tmp_path / "model_ep00007.pt", metadata={"episode": 7, "epsilon": 0.25}
    )
    onnx_path, _ = export_verified(HamletModel.load(checkpoint), tmp_path / "model_ep00007.onnx")
    loaded = load_backend(onnx_path, "cpu", "onnx")
    assert ops_for(loaded).kind == "numpy" and loaded.num_parameters == model.num_parameters
    meta = loaded.metadata
    assert meta["format_version"] == "hamlet_onnx_v1" and meta["source_format"] == "inference_v1"
    assert (meta["episode"], meta["epsilon"], meta["backend"]) == (7, 0.25, "onnxruntime")
    assert meta["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert meta["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert "source_path" not in meta  # the exporting machine's paths stay out of the file
    obs = np.random.default_rng(0).random((3, loaded.obs_dim), dtype=np.float32)
    q, _ = loaded.forward(obs, None)
    np.testing.assert_allclose(q, model.forward(torch.from_numpy(obs))[0].numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"model_ep00007.onnx is an ONNX export, which only --backend onnx serves"):
        load_backend(onnx_path, "cpu", "torch")


def test_a_checkpoint_without_torch_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hamlet_server import backends

    path = save_inference_checkpoint(_lstm(), tmp_path / "model_ep00001.pt")
    monkeypatch.setattr(backends, "_installed", lambda name: name != "torch")
    for backend in ("torch", "onnx"):
        with pytest.raises(
            MissingTorchError, match=r"model_ep00001.pt is a PyTorch checkpoint .*hamlet-server\[torch\]"
        ):
            load_backend(path, "cpu", backend)
    assert backends.resolve_backend("auto", "cpu") == "onnx" and backends.serving_device("auto") == "cpu"
    with pytest.raises(MissingTorchError, match=r"--device cuda needs torch"):
        backends.serving_device("cuda")


def test_hamlet_forward_is_the_same_under_inference_mode_and_tracks_no_grad() -> None:
    model = _lstm()
    obs = torch.rand(3, model.obs_dim)
    q, (h, c) = model.forward(obs, None)
    with torch.inference_mode():
        q_im, (h_im, c_im) = model.forward(obs, None)
    assert torch.equal(q, q_im) and torch.equal(h, h_im) and torch.equal(c, c_im)
    assert not q.requires_grad and not q.is_inference()  # outside: no_grad, as before
    assert q_im.is_inference()


class _CountingModel(HamletModel):
    calls = 0

    def forward(self, obs, hidden=None):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        return super().forward(obs, hidden)


async def test_the_batcher_runs_the_backends_forward() -> None:
    torch.manual_seed(0)
    model = _CountingModel(SimpleQNetwork(obs_dim=10, action_dim=4))
    batcher = StepBatcher(model, None)
    batcher.start()
    obs = torch.rand(2, 10)
    result = await batcher.submit(WorkItem(obs.numpy()))
    await batcher.close()
    assert _CountingModel.calls == 1
    torch.testing.assert_close(torch.from_numpy(result.q_values), model.forward(obs)[0], rtol=0, atol=0)


def test_no_any_in_the_serving_core_signatures() -> None:
    from hamlet_server import batcher, canary, repository

    for function in (batcher.StepBatcher.__init__, canary.canary_problem, repository.ServedModel.__init__):
        assert "Any" not in str(inspect.signature(function)), function
