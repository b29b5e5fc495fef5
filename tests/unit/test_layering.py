"""Dependencies point one way: client <- server; the model layer imports no training code and no gRPC."""

from __future__ import annotations

import ast
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


def test_viewer_builds_on_client_env_and_inference_only_and_nothing_imports_it() -> None:
    imported = _imports(ROOT / "server" / "hamlet_viewer")
    ours = {n for n in imported if _top({n}) & {"townlet", "hamlet_server", "hamlet_client", "hamlet_viewer"}}
    allowed = ("hamlet_client", "townlet.env", "townlet.inference", "hamlet_viewer")
    assert not {n for n in ours if not n.startswith(allowed)}
    for folder in ("server/townlet", "server/hamlet_server", "client/hamlet_client", "examples", "scripts", "bench"):
        assert "hamlet_viewer" not in _top(_imports(ROOT / folder)), folder
