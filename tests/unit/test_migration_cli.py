"""Migration (v2 -> inference_v1), the training-loop hook, and the hamlet-model CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hamlet_runs import make_network, write_training_checkpoint

from townlet.inference import HamletModel
from townlet.inference.cli import main
from townlet.inference.file_kind import not_a_checkpoint
from townlet.inference.migration import inference_path_for, migrate_checkpoint, plan_migration, save_inference_beside

ROOT = Path(__file__).resolve().parents[2]


def _run_folder(tmp_path: Path, network_type: str, episodes: tuple[int, ...] = (0, 100)) -> Path:
    ckpts = tmp_path / "runs" / "L1" / "2025-11-05_123456" / "checkpoints"
    for episode in episodes:
        write_training_checkpoint(ckpts, network_type, episode=episode, seed=episode)
    return tmp_path / "runs"


def test_migrate_round_trip_is_exact(training_checkpoint: Path, raw_network: torch.nn.Module) -> None:
    result = migrate_checkpoint(training_checkpoint)
    assert result.target == training_checkpoint.parent / "model_ep00100.pt"
    # A v2 file holds online + target weights and two Adam moments (>= 4x the weights) plus replay and RND.
    assert result.source_bytes > 4 * result.target_bytes
    model = HamletModel.load_from_checkpoint(result.target)
    obs = torch.rand(8, model.obs_dim)
    with torch.no_grad():
        assert torch.equal(model.predict(obs).q_values, raw_network(obs)[0])
    meta = model.metadata
    assert (meta["episode"], meta["epsilon"], meta["curriculum_stage"]) == (100, 0.6058, 3)
    source_sha = HamletModel.load(training_checkpoint).metadata["sha256"]
    assert meta["source_checkpoint"] == "checkpoint_ep00100.pt" and meta["source_sha256"] == source_sha
    with pytest.raises(FileExistsError, match="--overwrite"):
        migrate_checkpoint(training_checkpoint)


def test_inference_path_names(tmp_path: Path) -> None:
    assert inference_path_for("a/checkpoint_ep00042.pt").name == "model_ep00042.pt"
    assert inference_path_for("a/final.pt", tmp_path) == tmp_path / "model_final.pt"


def test_training_loop_hook_writes_beside(tmp_path: Path) -> None:
    network = make_network("recurrent", seed=4)
    training_path = tmp_path / "checkpoint_ep00300.pt"
    torch.save({"stand-in": 1}, training_path)  # the runner has just written its training checkpoint
    path = save_inference_beside(
        training_path,
        network,
        episode=300,
        epsilon=0.22,
        curriculum_stage=2,
        config_dir="configs/L2_partial_observability",
    )
    assert path == tmp_path / "model_ep00300.pt"
    model = HamletModel.load(path)
    assert (model.metadata["episode"], model.metadata["epsilon"], model.metadata["curriculum_stage"]) == (300, 0.22, 2)
    obs = torch.rand(2, 54)
    with torch.no_grad():
        assert torch.equal(model.predict(obs).q_values, network.eval()(obs)[0])


def test_cli_migrate_folder_dry_run_then_real(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _run_folder(tmp_path, "simple")
    assert main(["migrate", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 2 checkpoint(s), nothing written" in out and not list(runs.rglob("model_ep*.pt"))
    out_dir = tmp_path / "models"
    assert main(["migrate", str(runs), "--out", str(out_dir)]) == 0
    captured = capsys.readouterr()
    mirrored = out_dir / "L1" / "2025-11-05_123456" / "checkpoints"  # the tree below runs/, mirrored
    assert sorted(p.name for p in mirrored.iterdir()) == ["model_ep00000.pt", "model_ep00100.pt"]
    assert "migrated 2 checkpoint(s)" in captured.out and "x smaller" in captured.out
    assert "2/2" in captured.err  # progress
    assert main(["migrate", str(runs), "--out", str(out_dir)]) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert main(["migrate", str(runs), "--out", str(out_dir), "--overwrite"]) == 0


def test_cli_migrate_out_keeps_runs_that_share_episode_numbers_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    for run, network_type in (("L1/2025-11-05_1", "simple"), ("L2/2025-11-05_2", "recurrent")):
        for episode in (0, 100):
            write_training_checkpoint(runs / run / "checkpoints", network_type, episode=episode, seed=episode)
    out_dir = tmp_path / "models"
    assert main(["migrate", str(runs), "--out", str(out_dir)]) == 0
    assert "migrated 4 checkpoint(s)" in capsys.readouterr().out
    written = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("model_ep*.pt"))
    assert written == [
        "L1/2025-11-05_1/checkpoints/model_ep00000.pt",
        "L1/2025-11-05_1/checkpoints/model_ep00100.pt",
        "L2/2025-11-05_2/checkpoints/model_ep00000.pt",
        "L2/2025-11-05_2/checkpoints/model_ep00100.pt",
    ]
    assert HamletModel.load(out_dir / written[0]).metadata["network_type"] == "simple"
    assert HamletModel.load(out_dir / written[3]).metadata["network_type"] == "recurrent"
    # one run's checkpoints/ folder stays flat under --out
    single = tmp_path / "single"
    assert main(["migrate", str(runs / "L1" / "2025-11-05_1" / "checkpoints"), "--out", str(single)]) == 0
    assert sorted(p.name for p in single.iterdir()) == ["model_ep00000.pt", "model_ep00100.pt"]


def test_cli_migrate_refuses_two_files_for_one_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_training_checkpoint(tmp_path / "a", "simple", episode=100)
    b = write_training_checkpoint(tmp_path / "b", "simple", episode=100)
    out_dir = tmp_path / "models"
    assert main(["migrate", str(a), str(b), "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{a} and {b} would both be written to {out_dir / 'model_ep00100.pt'}" in err
    assert err.count("\n") == 1 and not out_dir.exists()  # nothing written, nothing dropped
    assert main(["migrate", str(a), str(b), "--out", str(out_dir), "--dry-run"]) == 2


def test_plan_migration_lists_a_file_given_twice_once(tmp_path: Path) -> None:
    source = write_training_checkpoint(tmp_path / "run", "simple", episode=5)
    plan = plan_migration([tmp_path / "run", source], tmp_path / "out")
    assert plan == [(source, tmp_path / "out" / "model_ep00005.pt")]


def test_cli_migrate_reports_a_bad_file_and_continues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _run_folder(tmp_path, "recurrent", episodes=(0,))
    next(runs.rglob("checkpoint_ep00000.pt")).with_name("checkpoint_ep00050.pt").write_bytes(b"broken")
    assert main(["migrate", str(runs)]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and "1 FAILED" in captured.out
    assert len(list(runs.rglob("model_ep*.pt"))) == 1


def test_cli_inspect(training_checkpoint: Path, capsys: pytest.CaptureFixture[str], network_type: str) -> None:
    assert main(["inspect", str(training_checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format_version"] == "training_v2" and info["network_type"] == network_type
    assert info["episode"] == 100 and info["file_bytes"] == training_checkpoint.stat().st_size
    assert main(["inspect", str(training_checkpoint)]) == 0
    assert "num_parameters" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "nope.pt"], "nope.pt: no such file"),
        (["migrate", "nope_dir"], "nope_dir: no such file or directory"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hamlet-model: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("agent.onnx", b"\x08\x08\x12\x07pytorch", "agent.onnx is an ONNX model, not a torch checkpoint; expected a"),
        ("notes.pt", b"hello world\n", "notes.pt is a text file (it starts 'hello world'), not a torch checkpoint"),
        ("empty.pt", b"", "empty.pt is empty, not a torch checkpoint"),
        ("noise.pt", bytes([0xB0, 0x37, 0xE5, 0x7C]), "noise.pt is not a torch checkpoint (it starts with bytes b0 37"),
    ],
)
def test_cli_inspect_names_what_a_foreign_file_is(
    tmp_path: Path, name: str, content: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "model_ep*.pt or checkpoint_ep*.pt" in err
    assert "weights_only" not in err and err.count("\n") == 1


def test_real_checkpoints_are_left_to_torch(tmp_path: Path) -> None:
    zipped = HamletModel(make_network("simple")).save(tmp_path / "m.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save({"x": 1}, legacy, _use_new_zipfile_serialization=False)
    for path in (zipped, legacy):
        assert not_a_checkpoint(path.name, path.read_bytes()[:512]) is None


def test_cli_inspect_a_real_onnx_export_points_at_verify_onnx(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    path = HamletModel(make_network("simple")).export_to_onnx(tmp_path / "x.onnx", verify=False)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is an ONNX model" in err and f"hamlet-model verify-onnx {path} CHECKPOINT" in err


def test_cli_unsafe_file_needs_trust(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pt"
    network = make_network("simple")
    torch.save(
        {
            "format_version": "inference_v1",
            "state_dict": network.state_dict(),
            "extra": Path("x"),
            "network_params": {"network_type": "simple", "obs_dim": 91, "action_dim": 6},
        },
        path,
    )
    assert main(["inspect", str(path)]) == 2
    assert "--trust" in capsys.readouterr().err
    assert main(["inspect", str(path), "--trust"]) == 0


def test_empty_folder_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", str(tmp_path)]) == 2
    assert "no checkpoint_ep*.pt found" in capsys.readouterr().err


@pytest.mark.slow  # starts Python processes
def test_console_script_help_and_seed_wrapper(tmp_path: Path) -> None:
    for argv in (["--help"], ["inspect", "--help"], ["migrate", "--help"]):
        done = subprocess.run([sys.executable, "-m", "townlet.inference.cli", *argv], capture_output=True, text=True)
        assert done.returncode == 0 and "usage: hamlet-model" in done.stdout
    runs = _run_folder(tmp_path, "simple", episodes=(7,))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "migrate_checkpoints.py"), str(runs)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert list(runs.rglob("model_ep00007.pt"))
