"""The server without torch: `pip install ./client '.[serve,onnxruntime]'` into a clean virtual environment
serves the demo models' ONNX exports end to end.

The venv is made with `python -m venv` (no system site packages) from a copy of what a checkout holds
(client/, proto/, the gRPC stub generator, server/, pyproject.toml): `import torch` fails in it. The trained
demo models are exported to ``model_epNNNNN.onnx`` with this (dev) environment's `hamlet-model export-onnx`;
the clean venv's `hamlet-server serve --backend onnx` serves them, and its Predict and stream answers equal,
bit for bit, what this environment's onnx backend computes on the same file (the same onnxruntime graph and
inputs). ListModels and GetModelMetadata show the checkpoint's metadata that the export carries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from demo_models import DEMO_L1, DEMO_L2, version_of

from hamlet_client import HamletClient
from hamlet_server.backends import load_onnx_file

pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # builds a venv, installs into it and starts a server from it

ROOT = Path(__file__).resolve().parents[2]
_IGNORE = shutil.ignore_patterns("*.egg-info", "__pycache__", "build", "dist", "_generated", "hamlet_viewer")
NAMES = {"townlet-L1-mlp": DEMO_L1, "townlet-L2-lstm": DEMO_L2}


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the venv's own packages
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _checkout(repo: Path) -> None:
    """What a checkout holds of the client, the contract and the server package (generated server stubs included:
    `make proto` writes them, as the image's build stage does)."""
    shutil.copytree(ROOT / "client", repo / "client", ignore=_IGNORE)
    shutil.copytree(ROOT / "proto", repo / "proto")
    (repo / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gen_proto.py", repo / "scripts")
    shutil.copytree(ROOT / "server", repo / "server", ignore=_IGNORE)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)


def _export(models: Path) -> None:
    """The demo models as model_epNNNNN.onnx, written by this environment's hamlet-model (torch and onnx)."""
    for name, checkpoint in NAMES.items():
        out = models / name / f"model_ep{version_of(checkpoint):05d}.onnx"
        cmd = [sys.executable, "-m", "townlet.inference.cli", "export-onnx", "--verify", str(checkpoint), str(out)]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def torch_free(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    """(models folder, the clean venv's python, the target of its running server)."""
    tmp = tmp_path_factory.mktemp("torch-free")
    repo, models, venv = tmp / "repo", tmp / "models", tmp / "venv"
    _checkout(repo)
    _export(models)
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", str(repo / "client"), f"{repo}[serve,onnxruntime]"], cwd=tmp)
    cmd = [str(venv / "bin" / "hamlet-server"), "serve", "--models", str(models), "--port", "0", "--metrics-port",
           "0", "--backend", "onnx", "--device", "cpu", "--poll-interval", "0", "--log-level", "warning"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("HAMLET_")}
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), f"the server did not start: {line!r} {proc.stderr and proc.stderr.read()}"
        yield models, python, line.split()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_the_clean_venv_has_no_torch(torch_free: tuple[Path, str, str]) -> None:
    _, python, _ = torch_free
    installed = json.loads(_run([python, "-m", "pip", "list", "--format=json"], cwd=Path(python).parent))
    names = {d["name"].lower() for d in installed}
    assert {"hamlet-server", "hamlet-client", "onnxruntime", "grpcio"} <= names
    assert not names & {"torch", "onnx"}, sorted(names)
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    _run([python, "-c", probe], cwd=Path(python).parent)


def test_predict_and_a_stream_answer_what_the_onnx_backend_computes(torch_free: tuple[Path, str, str]) -> None:
    models, _, target = torch_free
    lstm = load_onnx_file(next((models / "townlet-L2-lstm").glob("*.onnx")))  # this environment, same file
    mlp = load_onnx_file(next((models / "townlet-L1-mlp").glob("*.onnx")))
    rng = np.random.default_rng(0)
    with HamletClient(target, timeout=60.0) as client:
        obs = rng.random((3, 91), dtype=np.float32)
        np.testing.assert_array_equal(client.predict(obs, model="townlet-L1-mlp").q_values, mlp.forward(obs)[0])
        hidden = None
        with client.episode("townlet-L2-lstm", num_envs=2) as episode:
            for _ in range(4):
                obs = rng.random((2, 54), dtype=np.float32)
                q, hidden = lstm.forward(obs, hidden)
                np.testing.assert_array_equal(episode.step(obs).q_values, q)  # bit for bit: same graph, same inputs


def test_list_models_and_metadata_carry_the_checkpoints_metadata(torch_free: tuple[Path, str, str]) -> None:
    _, _, target = torch_free
    with HamletClient(target, timeout=60.0) as client:
        listed = {m.name: m for m in client.list_models()}
        assert sorted(listed) == sorted(NAMES)
        meta = client.metadata("townlet-L2-lstm")
    assert list(listed["townlet-L2-lstm"].versions) == [version_of(DEMO_L2)]
    assert (meta.obs_dim, meta.action_dim, meta.hidden_dim, meta.num_parameters) == (54, 6, 256, 636_486)
    assert meta.format_version == "hamlet_onnx_v1" and meta.episode == version_of(DEMO_L2)
    assert meta.epsilon == pytest.approx(0.05) and meta.extra["backend"] == "onnxruntime"
    assert meta.extra["source_format"] == "inference_v1" and meta.source_file.endswith(".onnx")
