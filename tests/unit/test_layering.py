"""Dependencies point one way: client <- server; the model layer imports no training code and no gRPC."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(package_dir: Path) -> set[str]:
    names: set[str] = set()
    for path in package_dir.rglob("*.py"):
        if "_generated" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return names


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def test_inference_imports_no_training_or_grpc() -> None:
    imported = _imports(ROOT / "server" / "townlet" / "inference")
    assert not {n for n in imported if n.startswith(("townlet.training", "townlet.env"))}
    assert not _top(imported) & {"grpc", "hamlet_server", "hamlet_client", "google"}


def test_client_imports_nothing_of_the_server_or_torch() -> None:
    imported = _top(_imports(ROOT / "client" / "hamlet_client"))
    assert not imported & {"torch", "townlet", "hamlet_server"}


def test_client_imports_onnxruntime_only_in_local_and_only_when_used() -> None:
    # `hamlet-client[local]` is an extra: importing the SDK must work without it.
    client = ROOT / "client" / "hamlet_client"
    sources = [p for p in client.rglob("*.py") if "_generated" not in p.parts]
    users = sorted(p.name for p in sources if "onnxruntime" in _top(_imports_of(p)))
    assert users == ["local.py"]
    module_level = _top(_imports_of(client / "local.py", top_level_only=True))
    assert "onnxruntime" not in module_level, "import onnxruntime inside the function that needs it"


def _imports_of(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_agent_imports_nothing_above_it() -> None:
    imported = _imports(ROOT / "server" / "townlet" / "agent")
    assert {n for n in imported if n.startswith("townlet")} <= {"townlet.agent.errors", "townlet.agent.networks"}
    assert not _top(imported) & {"hamlet_server", "hamlet_client", "hamlet_viewer", "grpc"}


def test_brain_spec_error_is_one_class_re_exported_by_inference() -> None:
    from townlet.agent.brain import normalize_brain_spec
    from townlet.agent.errors import BrainSpecError
    from townlet.inference import BrainSpecError as from_inference

    assert from_inference is BrainSpecError and issubclass(BrainSpecError, ValueError)
    with pytest.raises(from_inference, match=r"network\.type"):
        normalize_brain_spec({"network": {"type": "transformer"}})


def test_server_builds_on_inference_and_client_only() -> None:
    imported = _imports(ROOT / "server" / "hamlet_server")
    ours = {n for n in imported if _top({n}) & {"townlet", "hamlet_server", "hamlet_client", "hamlet_viewer"}}
    allowed = ("townlet.inference", "hamlet_client", "hamlet_server")
    assert not {n for n in ours if not n.startswith(allowed)}, "hamlet_server may import townlet.inference only"
    for folder in ("server/townlet", "client/hamlet_client"):
        assert "hamlet_server" not in _top(_imports(ROOT / folder)), folder


def test_training_is_imported_by_nothing_below_it() -> None:
    for folder in ("server/townlet/agent", "server/townlet/env", "server/townlet/inference", "server/hamlet_server"):
        assert not {n for n in _imports(ROOT / folder) if n.startswith("townlet.training")}, folder


@pytest.mark.slow  # starts a Python process per module
@pytest.mark.parametrize(
    "module",
    [
        "townlet.inference.errors",
        "townlet.inference.validation",
        "townlet.inference",
        "townlet.agent.errors",
        "hamlet_viewer.cli, hamlet_viewer.app",  # against a server the viewer needs no torch: only --checkpoint
    ],
)
def test_light_modules_do_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


_SERVE_WITHOUT_TORCH = """
import asyncio, sys
import grpc, numpy as np
from hamlet_client.proto import inference_service_pb2 as pb, inference_service_pb2_grpc as pb_grpc
from hamlet_server.config import ServerConfig
from hamlet_server.server import HamletServer
from hamlet_server.tensor_codec import encode_tensor

async def main():
    server = HamletServer(ServerConfig(models=sys.argv[1], port=0, metrics_port=0, device="auto", backend="onnx"))
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        names = sorted(m.name for m in (await stub.ListModels(pb.ListModelsRequest())).models)
        obs = encode_tensor(np.zeros((2, 54), np.float32))
        await stub.Predict(pb.PredictRequest(model="lstm", observations=obs, epsilon=0.5, seed=1))
        call = stub.StreamEpisode()
        start = pb.EpisodeStart(model="lstm", num_envs=2, epsilon=0.5, seed=2, snapshot_every=1)
        await call.write(pb.StreamEpisodeRequest(start=start))
        await call.read()
        await call.write(pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=obs)))
        step = (await call.read()).step
        await call.done_writing()
        await call.code()
    await server.drain(grace=0.5)
    print(names, server.backend, step.HasField("snapshot"), "torch" in sys.modules)

asyncio.run(main())
"""


@pytest.mark.slow  # exports two models and starts a Python process that serves them
def test_onnx_serving_of_onnx_files_imports_no_torch(tmp_path: Path) -> None:
    """With .onnx files and --backend onnx (--device auto), importing and running hamlet_server never imports
    torch: a `torch` package that raises on import comes first on the path."""
    from demo_models import DEMO_L1, DEMO_L2

    from townlet.inference import HamletModel
    from townlet.inference.onnx_export import export_verified

    for name, checkpoint in (("mlp", DEMO_L1), ("lstm", DEMO_L2)):
        export_verified(HamletModel.load(checkpoint), tmp_path / "models" / name / "model_ep00001.onnx")
    poison = tmp_path / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('the torch-free server imported torch')\n")
    path = os.pathsep.join([str(poison.parent), str(ROOT / "server"), str(ROOT / "client")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", _SERVE_WITHOUT_TORCH, str(tmp_path / "models")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "['lstm', 'mlp'] onnx True False"


def test_viewer_builds_on_client_env_and_inference_only_and_nothing_imports_it() -> None:
    imported = _imports(ROOT / "server" / "hamlet_viewer")
    ours = {n for n in imported if _top({n}) & {"townlet", "hamlet_server", "hamlet_client", "hamlet_viewer"}}
    allowed = ("hamlet_client", "townlet.env", "townlet.inference", "hamlet_viewer")
    assert not {n for n in ours if not n.startswith(allowed)}
    for folder in ("server/townlet", "server/hamlet_server", "client/hamlet_client", "examples", "scripts", "bench"):
        assert "hamlet_viewer" not in _top(_imports(ROOT / folder)), folder
