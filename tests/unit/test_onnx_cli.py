"""``hamlet-model export-onnx`` / ``verify-onnx`` through `cli.main`, a local parser, and scripts/export_onnx.py."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hamlet_runs import make_network, write_training_checkpoint

from townlet.inference import cli
from townlet.inference.model import HamletModel
from townlet.inference.onnx_cli import add_onnx_commands
from townlet.inference.onnx_runtime import OnnxModel

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hamlet-model: error: "), err
    return lines[0]


def test_export_training_checkpoint_with_verify(
    tmp_path: Path, training_checkpoint: Path, network_type: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "agent.onnx"
    assert cli.main(["export-onnx", str(training_checkpoint), str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} ({network_type}" in printed and "PASSED" in printed and "rollout=50" in printed
    meta = OnnxModel(out).metadata
    assert meta["source_format"] == "training_v2" and meta["episode"] == "100"
    assert meta["checkpoint_sha256"] == HamletModel.load(training_checkpoint).metadata["sha256"]


def test_verify_onnx_passes_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = HamletModel(make_network("recurrent", seed=5)).save(tmp_path / "model.pt")
    out = tmp_path / "model.onnx"
    assert cli.main(["export-onnx", str(checkpoint), str(out), "--opset", "18"]) == 0
    capsys.readouterr()
    assert cli.main(["verify-onnx", str(out), str(checkpoint), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["opset"] == 18
    assert set(report["max_abs_diff"]) == {"q_values", "new_hidden_h", "new_hidden_c"}
    assert set(report["max_rel_diff"]) == set(report["max_tolerance_ratio"]) == set(report["max_abs_diff"])
    assert max(report["max_tolerance_ratio"].values()) <= 1.0
    assert report["atol"] == 1e-5 and report["rtol"] == 1e-5


def test_verify_onnx_against_another_checkpoint_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = HamletModel(make_network("simple", seed=1)).save(tmp_path / "a.pt")
    second = HamletModel(make_network("simple", seed=2)).save(tmp_path / "b.pt")
    assert cli.main(["export-onnx", str(first), str(tmp_path / "a.onnx")]) == 0
    capsys.readouterr()
    assert cli.main(["verify-onnx", str(tmp_path / "a.onnx"), str(second)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "checkpoint and ONNX file do not match" in line and "other weights" in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["export-onnx", "{missing}", "{out}"], "no such file"),
        (["export-onnx", "{ckpt}", "{existing}"], "exists; pass --overwrite"),
        (["export-onnx", "{ckpt}", "{tmp}/x.onx"], "OUT should end in .onnx"),
        (["export-onnx", "{ckpt}", "{out}", "--opset", "13"], "opset: expected an int from 17 to 20, got 13"),
        (["verify-onnx", "{missing_onnx}", "{ckpt}"], "no such file"),
        (["verify-onnx", "{existing}", "{missing}"], "no such file"),
        (["verify-onnx", "{existing}", "{ckpt}", "--atol", "-1"], "atol: expected a number >= 0, got -1.0"),
        (["export-onnx", "{ckpt}", "{out}", "--verify", "--atol", "0", "--rtol", "0"], "atol and rtol are both 0"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    ckpt = HamletModel(make_network("simple")).save(tmp_path / "m.pt")
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"x")
    names = {
        "missing": tmp_path / "missing.pt",
        "missing_onnx": tmp_path / "missing.onnx",
        "out": tmp_path / "out.onnx",
        "ckpt": ckpt,
        "existing": existing,
        "tmp": tmp_path,
    }
    assert cli.main([arg.format(**names) for arg in argv]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out.onnx").exists()


def test_swapped_arguments_say_which_is_which(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = HamletModel(make_network("simple", seed=1)).save(tmp_path / "model_ep00001.pt")
    out = tmp_path / "model.onnx"
    assert cli.main(["export-onnx", str(checkpoint), str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["verify-onnx", str(checkpoint), str(out)]) == 2  # CHECKPOINT OUT.onnx: swapped
    line = _one_error_line(capsys.readouterr().err)
    assert f"{checkpoint} is a torch checkpoint: verify-onnx takes the ONNX file first" in line
    assert f"run 'hamlet-model verify-onnx {out} {checkpoint}'" in line and "weights_only" not in line
    assert cli.main(["verify-onnx", str(checkpoint), str(checkpoint)]) == 2  # a checkpoint twice
    line = _one_error_line(capsys.readouterr().err)
    assert "verify-onnx takes OUT.onnx (written by export-onnx) first, then CHECKPOINT" in line
    assert cli.main(["verify-onnx", str(out), str(checkpoint)]) == 0  # the right order still verifies
    capsys.readouterr()
    assert cli.main(["export-onnx", str(tmp_path / "new.onnx"), str(checkpoint)]) == 2  # export-onnx swapped too
    line = _one_error_line(capsys.readouterr().err)
    assert f"run 'hamlet-model export-onnx {checkpoint} {tmp_path / 'new.onnx'}'" in line
    assert "exists; pass --overwrite" not in line and not (tmp_path / "new.onnx").exists()


def test_overwrite_replaces_the_file(tmp_path: Path) -> None:
    ckpt = HamletModel(make_network("simple")).save(tmp_path / "m.pt")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    assert cli.main(["export-onnx", str(ckpt), str(out), "--overwrite"]) == 0
    assert OnnxModel(out).obs_dim == 91


def test_add_onnx_commands_registers_both_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="hamlet-model")
    add_onnx_commands(parser.add_subparsers())
    args = parser.parse_args(["export-onnx", "a.pt", "b.onnx", "--verify", "--opset", "18", "--trust"])
    assert callable(args.func) and args.verify and args.opset == 18 and args.trust
    args = parser.parse_args(["verify-onnx", "b.onnx", "a.pt"])
    assert callable(args.func) and args.atol == 1e-5 and args.rtol == 1e-5
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    usage = capsys.readouterr().out
    assert "export-onnx" in usage and "verify-onnx" in usage


@pytest.mark.slow  # starts two Python processes
def test_export_script_wraps_the_same_command(tmp_path: Path) -> None:
    ckpt = HamletModel(make_network("simple")).save(tmp_path / "m.pt")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export_onnx.py"), str(ckpt), str(tmp_path / "m.onnx"), "--verify"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "PASSED" in done.stdout
    training = write_training_checkpoint(tmp_path / "run", "simple")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export_onnx.py"), str(training), str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "exists; pass --overwrite" in done.stderr
