"""scripts/*.py: each ``--help`` names its own program, prints a usage line that works when followed, and
changes nothing; make_demo_models never writes into models/ unless told where to write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hamlet_runs import write_training_checkpoint

from townlet.inference import HamletModel

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"

pytestmark = pytest.mark.slow  # every test starts a Python process


def _script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=180, cwd=cwd
    )


def test_export_onnx_usage_line_works_when_followed(tmp_path: Path) -> None:
    done = _script("export_onnx.py", "--help")
    assert done.returncode == 0, done.stderr
    usage = done.stdout.split("\n\n")[0]
    assert usage.startswith("usage: export_onnx.py ") and "export-onnx" not in usage
    assert "CHECKPOINT OUT.onnx" in usage
    pytest.importorskip("onnxruntime")
    checkpoint = REPO / "models" / "townlet-L1-mlp" / "model_ep00300.pt"
    followed = _script("export_onnx.py", str(checkpoint), str(tmp_path / "agent.onnx"), "--verify")
    assert followed.returncode == 0, followed.stderr
    assert (tmp_path / "agent.onnx").is_file()


def test_migrate_checkpoints_names_itself(tmp_path: Path) -> None:
    done = _script("migrate_checkpoints.py", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: migrate_checkpoints.py ")
    assert "hamlet-model" not in done.stdout.split("\n\n")[0]
    error = _script("migrate_checkpoints.py", str(tmp_path / "nope"))
    assert error.returncode == 2 and error.stderr.startswith("migrate_checkpoints.py: error: ")
    run = tmp_path / "run"
    write_training_checkpoint(run, "simple", episode=7)
    done = _script("migrate_checkpoints.py", str(run), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert HamletModel.load(tmp_path / "out" / "model_ep00007.pt").metadata["episode"] == 7


def test_gen_proto_help_prints_help_and_generates_nothing() -> None:
    generated = REPO / "client" / "hamlet_client" / "_generated"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in generated.rglob("*.py")) if generated.exists() else []
    done = _script("gen_proto.py", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: gen_proto.py [-h]")
    assert "gen_proto: generated" not in done.stdout
    after = sorted((p.name, p.stat().st_mtime_ns) for p in generated.rglob("*.py")) if generated.exists() else []
    assert after == before


def test_make_demo_models_needs_out_and_keeps_away_from_models(tmp_path: Path) -> None:
    models_before = sorted(p.relative_to(REPO) for p in (REPO / "models").rglob("*"))
    bare = _script("make_demo_models.py", cwd=tmp_path)
    assert bare.returncode == 2 and "--out" in bare.stderr
    into_models = _script("make_demo_models.py", "--out", str(REPO / "models"))
    assert into_models.returncode == 2 and "trained demo models" in into_models.stderr
    assert sorted(p.relative_to(REPO) for p in (REPO / "models").rglob("*")) == models_before
    done = _script("make_demo_models.py", "--out", str(tmp_path / "repo"))
    assert done.returncode == 0, done.stderr
    written = sorted(str(p.relative_to(tmp_path / "repo")) for p in (tmp_path / "repo").rglob("*.pt"))
    assert written == ["untrained-lstm-L2/model_ep00000.pt", "untrained-mlp-L1/model_ep00000.pt"]
    assert HamletModel.load(tmp_path / "repo" / written[1]).metadata["untrained"] is True
