"""`pip install ./client` from a fresh clone into a clean virtual environment gives a working, torch-free client.

The venv is made with `python -m venv` (no system site packages) and gets only what `client/pyproject.toml`
asks for. A snippet run by the venv's interpreter, outside the source tree, imports hamlet_client, checks
that `import torch` fails, and talks to a real server started here from the main environment; its Q-values
must equal the local HamletModel's.
"""

from __future__ import annotations

import json
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
ALLOWED_DISTRIBUTIONS = {"hamlet-client", "grpcio", "protobuf", "numpy", "pip", "setuptools", "typing-extensions"}

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


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture
def mlp_server(tmp_path: Path) -> Iterator[tuple[str, HamletModel]]:
    """A real server (own event loop, own thread) hosting one seeded MLP model named `mlp`."""
    torch.manual_seed(0)
    model = HamletModel(SimpleQNetwork(obs_dim=91, action_dim=6))
    save_inference_checkpoint(model, tmp_path / "models" / "mlp" / "model_ep00001.pt", metadata={"episode": 1})
    server = ThreadedServer(ServerConfig(models=tmp_path / "models", port=0, metrics_port=0, poll_interval=0))
    yield server.target, model
    server.stop()


@pytest.mark.slow
def test_pip_install_client_into_a_clean_venv_works_without_torch(
    tmp_path: Path, mlp_server: tuple[str, HamletModel]
) -> None:
    # Lay out what a fresh clone has: client/ WITHOUT generated stubs, proto/ and the generator script.
    # Building the client must then generate the stubs itself (client/setup.py).
    repo = tmp_path / "repo"
    source = repo / "client"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build", "dist", "_generated")
    )
    shutil.copytree(ROOT / "proto", repo / "proto")
    (repo / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gen_proto.py", repo / "scripts")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)], cwd=tmp_path)

    installed = json.loads(_run([python, "-m", "pip", "list", "--format=json"], cwd=tmp_path))
    names = {d["name"].lower().replace("_", "-") for d in installed}
    assert "hamlet-client" in names
    assert names <= ALLOWED_DISTRIBUTIONS, f"unexpected dependencies: {sorted(names - ALLOWED_DISTRIBUTIONS)}"

    target, model = mlp_server
    (tmp_path / "snippet.py").write_text(SNIPPET)
    out = json.loads(_run([python, "snippet.py", target], cwd=tmp_path, timeout=120).strip().splitlines()[-1])

    assert str(venv) in out["module"], "hamlet_client was imported from the source tree, not the venv"
    assert out["torch_spec"] is False
    assert out["torch_import"].startswith("ImportError")
    obs = np.linspace(0.0, 1.0, 2 * 91, dtype=np.float32).reshape(2, 91)
    np.testing.assert_array_equal(np.array(out["q_values"], dtype=np.float32), model.predict(obs).q_values.numpy())
    assert out["models"] == ["mlp"]
    assert out["steps"] == [0, 1, 2]
    assert out["not_found"] == "NOT_FOUND"
