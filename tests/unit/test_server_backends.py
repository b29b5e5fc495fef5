"""The `Backend` surface: both backends offer every member, HamletModel.forward gives the same numbers with
and without the server's inference_mode, and the batcher runs the backend's own forward (it no longer
reaches into ``model.network``)."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

from hamlet_server.backends import Backend, load_backend
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
    assert loaded.device == torch.device("cpu") and loaded.num_parameters > 0
    q, hidden = loaded.forward(torch.zeros(2, loaded.obs_dim), None)
    assert q.shape == (2, 6) and hidden is not None and hidden[0].shape == (1, 2, 16)


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
    result = await batcher.submit(WorkItem(obs))
    await batcher.close()
    assert _CountingModel.calls == 1
    torch.testing.assert_close(torch.from_numpy(result.q_values), model.forward(obs)[0], rtol=0, atol=0)


def test_no_any_in_the_serving_core_signatures() -> None:
    from hamlet_server import batcher, canary, repository

    for function in (batcher.StepBatcher.__init__, canary.canary_problem, repository.ServedModel.__init__):
        assert "Any" not in str(inspect.signature(function)), function
