"""`pip install ./client` (and `./sim`) from a fresh clone into a clean virtual environment: torch-free.

The venv is made with `python -m venv` (no system site packages) and gets only what `client/pyproject.toml`
(and `sim/pyproject.toml`) ask for. A snippet run by the venv's interpreter, outside the source tree, imports
hamlet_client, checks that `import torch` fails, and talks to a real server started here from the main
environment; its Q-values must equal the local HamletModel's. With the numpy-only simulator installed too,
examples/remote_rollout.py runs from that venv against the same server.
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
import torch
from live_server import ThreadedServer

from hamlet_server.config import ServerConfig
from townlet.agent.networks import SimpleQNetwork
from townlet.inference import HamletModel, save_inference_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client"
ALLOWED_DISTRIBUTIONS = {
    "hamlet-client", "grpcio", "protobuf", "numpy", "pip", "setuptools", "typing-extensions",
    "googleapis-common-protos",  # google.rpc error details (ErrorInfo, BadRequest)
}  # fmt: skip
SIM_SNIPPET = r"""
import importlib.util, json, sys
import numpy as np
import townlet.env
from townlet.env import VectorTownletEnv, training_layout

env = VectorTownletEnv("L1", 2, seed=0)
env.reset()
obs, reward, done, info = env.step(np.array([5, 5]))
print(json.dumps({
    "module": townlet.env.__file__,
    "torch": importlib.util.find_spec("torch") is not None,
    "training": importlib.util.find_spec("townlet.training") is not None,
    "obs_shape": list(obs.shape),
    "layout": {k: list(v) for k, v in training_layout("L1", 3).items()},
}))
"""

SNIPPET = r"""
import importlib.util, json, sys
import numpy as np
import hamlet_client
from hamlet_client import HamletClient, ModelNotFoundError

out = {"module": hamlet_client.__file__, "torch_spec": importlib.util.find_spec("torch") is not None}
try:
    import torch  # noqa: F401
    out["torch_import"] = "succeeded"
except ImportError as exc:
    out["torch_import"] = f"ImportError: {exc}"
client = HamletClient(sys.argv[1])
obs = np.linspace(0.0, 1.0, 2 * 91, dtype=np.float32).reshape(2, 91)
result = client.predict(obs, model="mlp")
out["q_values"] = result.q_values.tolist()
out["models"] = [m.name for m in client.list_models()]
with client.episode("mlp", num_envs=2) as episode:
    out["steps"] = [episode.step(obs).step_index for _ in range(3)]
try:
    client.predict(obs, model="missing")
except ModelNotFoundError as exc:
    out["not_found"] = exc.code.name
client.close()
print(json.dumps(out))
"""

LOCAL_EXTRA = {"onnxruntime", "flatbuffers", "packaging"}  # hamlet-client[local]: onnxruntime and what it needs
LOCAL_SNIPPET = r"""
import importlib.util, json, sys
import numpy as np
from hamlet_client import HamletClient

out = {"torch_spec": importlib.util.find_spec("torch") is not None}
with HamletClient(sys.argv[1]) as client:
    policy = client.local_policy("mlp")
    obs = np.linspace(0.0, 1.0, 2 * 91, dtype=np.float32).reshape(2, 91)
    out["q_values"] = policy.predict(obs).q_values.tolist()
    with policy.episode(num_envs=2) as episode:
        out["steps"] = [episode.step(obs).step_index for _ in range(3)]
    out["version"] = policy.version
print(json.dumps(out))
"""


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the venv's own packages
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture
def mlp_server(tmp_path: Path) -> Iterator[tuple[str, HamletModel]]:
    """A real server (own event loop, own thread) hosting one seeded MLP model named `mlp`."""
    torch.manual_seed(0)
    model = HamletModel(SimpleQNetwork(obs_dim=91, action_dim=6))
    metadata = {"episode": 1, "level": "L1", "seed": 3}  # what hamlet-train writes; remote_rollout reads them
    save_inference_checkpoint(model, tmp_path / "models" / "mlp" / "model_ep00001.pt", metadata=metadata)
    server = ThreadedServer(
        ServerConfig(models=tmp_path / "models", port=0, metrics_port=0, poll_interval=0, backend="torch")
    )
    yield server.target, model
    server.stop()


_IGNORE = shutil.ignore_patterns("*.egg-info", "__pycache__", "build", "dist", "_generated")


def _fresh_clone(repo: Path) -> None:
    """What a fresh clone has of client/ (WITHOUT generated stubs: client/setup.py must generate them from
    proto/ with the generator script), of the simulator (server/townlet/env, sim/) and of the example."""
    shutil.copytree(CLIENT, repo / "client", ignore=_IGNORE)
    shutil.copytree(ROOT / "proto", repo / "proto")
    (repo / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gen_proto.py", repo / "scripts")
    shutil.copytree(ROOT / "sim", repo / "sim", ignore=_IGNORE)
    shutil.copytree(ROOT / "server" / "townlet" / "env", repo / "server" / "townlet" / "env", ignore=_IGNORE)
    (repo / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "remote_rollout.py", repo / "examples")


def _venv(tmp_path: Path, *sources: Path | str) -> str:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *map(str, sources)], cwd=tmp_path)
    return python


def _distributions(python: str, cwd: Path) -> set[str]:
    installed = json.loads(_run([python, "-m", "pip", "list", "--format=json"], cwd=cwd))
    return {d["name"].lower().replace("_", "-") for d in installed}


@pytest.mark.slow
def test_pip_install_client_into_a_clean_venv_works_without_torch(
    tmp_path: Path, mlp_server: tuple[str, HamletModel]
) -> None:
    repo = tmp_path / "repo"
    _fresh_clone(repo)
    source = repo / "client"
    python = _venv(tmp_path, source)
    venv = tmp_path / "venv"

    names = _distributions(python, tmp_path)
    assert "hamlet-client" in names
    assert names <= ALLOWED_DISTRIBUTIONS, f"unexpected dependencies: {sorted(names - ALLOWED_DISTRIBUTIONS)}"

    target, model = mlp_server
    (tmp_path / "snippet.py").write_text(SNIPPET)
    out = json.loads(_run([python, "snippet.py", target], cwd=tmp_path, timeout=120).strip().splitlines()[-1])

    assert str(venv) in out["module"], "hamlet_client was imported from the source tree, not the venv"
    assert out["torch_spec"] is False
    assert out["torch_import"].startswith("ImportError")
    obs = np.linspace(0.0, 1.0, 2 * 91, dtype=np.float32).reshape(2, 91)
    np.testing.assert_array_equal(np.array(out["q_values"], dtype=np.float32), np.asarray(model.predict(obs).q_values))
    assert out["models"] == ["mlp"]
    assert out["steps"] == [0, 1, 2]
    assert out["not_found"] == "NOT_FOUND"


@pytest.mark.slow
def test_client_and_numpy_only_simulator_run_remote_rollout_without_torch(
    tmp_path: Path, mlp_server: tuple[str, HamletModel]
) -> None:
    # `pip install ./client ./sim`: the SDK and townlet.env, nothing else of the server, no torch.
    repo = tmp_path / "repo"
    _fresh_clone(repo)
    python = _venv(tmp_path, repo / "client", repo / "sim")
    names = _distributions(python, tmp_path)
    assert {"hamlet-client", "townlet-sim"} <= names
    assert names <= ALLOWED_DISTRIBUTIONS | {"townlet-sim"}, f"unexpected: {sorted(names - ALLOWED_DISTRIBUTIONS)}"

    (tmp_path / "sim_snippet.py").write_text(SIM_SNIPPET)
    out = json.loads(_run([python, "sim_snippet.py"], cwd=tmp_path, timeout=120).strip().splitlines()[-1])
    assert str(tmp_path / "venv") in out["module"], "townlet.env was imported from the source tree, not the venv"
    assert out["torch"] is False and out["training"] is False
    assert out["obs_shape"] == [2, 91]
    from townlet.env import training_layout  # the same layout as the full install computes

    assert out["layout"] == {k: list(v) for k, v in training_layout("L1", 3).items()}

    target, _ = mlp_server
    example = repo / "examples" / "remote_rollout.py"
    command = [python, str(example), "--target", target, "--model", "mlp", "--envs", "2", "--episodes", "2"]
    printed = _run(command, cwd=tmp_path, timeout=300)
    assert "on L1, 2 episodes, trained layout, 1 stream of 2 envs" in printed  # level and seed from metadata
    lines = printed.splitlines()
    assert lines[1].startswith("served") and lines[2].startswith("random")


@pytest.mark.slow
def test_the_local_extra_runs_the_policy_in_a_clean_venv_without_torch(
    tmp_path: Path, mlp_server: tuple[str, HamletModel]
) -> None:
    # `pip install './client[local]'`: onnxruntime joins the SDK, torch still does not.
    repo = tmp_path / "repo"
    _fresh_clone(repo)
    python = _venv(tmp_path, f"{repo / 'client'}[local]")
    names = _distributions(python, tmp_path)
    assert names <= ALLOWED_DISTRIBUTIONS | LOCAL_EXTRA, f"unexpected: {sorted(names - ALLOWED_DISTRIBUTIONS)}"
    assert "onnxruntime" in names and "torch" not in names

    target, model = mlp_server
    (tmp_path / "local_snippet.py").write_text(LOCAL_SNIPPET)
    out = json.loads(_run([python, "local_snippet.py", target], cwd=tmp_path, timeout=120).strip().splitlines()[-1])
    assert out["torch_spec"] is False
    obs = np.linspace(0.0, 1.0, 2 * 91, dtype=np.float32).reshape(2, 91)
    want = np.asarray(model.predict(obs).q_values)
    np.testing.assert_allclose(np.array(out["q_values"], dtype=np.float32), want, atol=1e-5, rtol=1e-5)
    assert out["steps"] == [0, 1, 2] and out["version"] == 1
