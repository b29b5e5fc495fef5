"""The examples of docs/MODEL_EXPORT.md run on a fresh clone (defaulting to the trained demo models in models/)
and say OK; a mistake ends in one line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from demo_models import DEMO_L1, DEMO_L2
from hamlet_runs import make_network

from townlet.inference.model import HamletModel
from townlet.inference.onnx_export import export_to_onnx

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # every test starts a Python process


def _run(script: str, *args: str, returncode: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == returncode, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def test_custom_env_defaults_to_the_trained_demo_model() -> None:
    out = _run("custom_env.py", "--episodes", "2", "--max-steps", "15", "--epsilon", "0.5").stdout
    assert "episode 0: " in out and "episode 1: " in out
    assert "custom_env: 2 episodes, mean return" in out
    with_default = _run("custom_env.py", "--episodes", "1", "--max-steps", "15", "--epsilon", "0").stdout
    explicit = _run(
        "custom_env.py", "--checkpoint", str(DEMO_L2), "--episodes", "1", "--max-steps", "15", "--epsilon", "0"
    ).stdout
    assert with_default == explicit


def test_custom_env_refuses_an_l1_model_in_one_line() -> None:
    done = _run("custom_env.py", "--checkpoint", str(DEMO_L1), returncode=2)
    assert "Traceback" not in done.stderr and "Hamlet's L2 layout (obs 54, 6 actions)" in done.stderr


def test_transfer_learning(tmp_path: Path) -> None:
    out = _run("transfer_learning.py", "--steps", "5", "--batch", "16", "--out", str(tmp_path / "ft.pt")).stdout
    assert "frozen vision_encoder: 107,584 params" in out
    assert "vision_encoder unchanged: True; q_head changed: True" in out
    assert "reloads with identical weights: True" in out and "transfer_learning: OK" in out
    finetuned = HamletModel.load(tmp_path / "ft.pt")
    assert finetuned.metadata["fine_tune_steps"] == 5
    assert finetuned.metadata["fine_tuned_from"] == HamletModel.load(DEMO_L2).metadata["sha256"]  # the trained model


def test_ensemble_with_given_checkpoints(tmp_path: Path) -> None:
    paths = [str(HamletModel(make_network("simple", seed=s)).save(tmp_path / f"m{s}.pt")) for s in range(2)]
    out = _run("ensemble.py", "--checkpoints", *paths, "--steps", "3", "--batch", "4").stdout
    assert "ensemble of 2 models, obs 91" in out and "ensemble: OK (3 steps x batch 4)" in out
    assert out.count("agrees with the ensemble") == 2


def test_ensemble_with_demo_members() -> None:
    out = _run("ensemble.py", "--members", "2", "--steps", "2", "--batch", "2").stdout
    assert "ensemble of 2 models, obs 54" in out and "ensemble: OK" in out


def test_ensemble_of_an_l1_and_an_l2_model_says_why_in_one_line() -> None:
    done = _run("ensemble.py", "--checkpoints", str(DEMO_L1), str(DEMO_L2), returncode=2)
    assert "Traceback" not in done.stderr
    assert "members must share obs_dim and action_dim" in done.stderr
    assert f"townlet-L1-mlp/{DEMO_L1.name} (obs 91, 6 actions)" in done.stderr
    assert f"townlet-L2-lstm/{DEMO_L2.name} (obs 54, 6 actions)" in done.stderr


def test_onnx_inference_exports_a_demo_model() -> None:
    out = _run("onnx_inference.py", "--steps", "3", "--batch", "2").stdout
    assert "recurrent network: obs_dim 54, action_dim 6, opset 17" in out
    assert "onnx_inference: OK" in out


@pytest.mark.parametrize("network_type", ["simple", "recurrent"])
def test_onnx_inference_on_a_given_file_never_imports_torch(tmp_path: Path, network_type: str) -> None:
    torch.set_num_threads(1)
    path = export_to_onnx(HamletModel(make_network(network_type, seed=2)), tmp_path / "agent.onnx")
    out = _run("onnx_inference.py", "--onnx", str(path), "--steps", "4", "--batch", "3").stdout
    assert "4 steps x batch 3: greedy action counts" in out
    assert "torch imported: False" in out
