"""ONNX export and verification on trained agents, whose Q-values (|Q| 50-100, and a scaled model in the
hundreds) are where a pure absolute tolerance broke: the demo models export, verify and agree with PyTorch
on greedy actions; a failed verification never leaves a file behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from demo_models import DEMO_L1, DEMO_L2

from townlet.inference import cli
from townlet.inference.model import HamletModel
from townlet.inference.onnx_export import ExportVerificationError, export_verified, verify_onnx_export
from townlet.inference.onnx_runtime import OnnxModel

torch.set_num_threads(1)
DEMO = {"simple": DEMO_L1, "recurrent": DEMO_L2}


@pytest.fixture(scope="module", params=sorted(DEMO))
def demo(request: pytest.FixtureRequest) -> HamletModel:
    return HamletModel.load(DEMO[request.param])


def _max_abs_q(model: HamletModel) -> float:
    obs = torch.rand(256, model.obs_dim, generator=torch.Generator().manual_seed(0))
    return float(model.predict(obs).q_values.abs().max())


def test_demo_models_have_large_q_values(demo: HamletModel) -> None:
    """The premise: these are not small untrained outputs (|Q| of tens), so 1e-5 absolute is ~1 ULP."""
    assert _max_abs_q(demo) > 20.0


def test_demo_models_export_and_verify(demo: HamletModel, tmp_path: Path) -> None:
    path, report = export_verified(demo, tmp_path / "demo.onnx")
    assert path.is_file() and report.passed and report.onnx_path == str(path)
    assert all(ratio <= 1.0 for ratio in report.max_tolerance_ratio.values())
    assert "max rel" in report.summary() and "of the tolerance" in report.brief()


def test_q_values_in_the_hundreds_verify(tmp_path: Path) -> None:
    model = HamletModel.load(DEMO["simple"])
    with torch.no_grad():
        last = [p for name, p in model.network.named_parameters() if name.endswith("weight")][-1]
        last.mul_(5.0)
    assert _max_abs_q(model) > 150.0
    _, report = export_verified(model, tmp_path / "big.onnx")
    assert report.passed and report.max_rel_diff["q_values"] < 1e-5


def test_greedy_actions_agree_with_pytorch(demo: HamletModel, tmp_path: Path) -> None:
    path, _ = export_verified(demo, tmp_path / "demo.onnx")
    runtime = OnnxModel(path)
    obs = np.random.default_rng(1).random((512, demo.obs_dim), dtype=np.float32)
    want = demo.predict(torch.from_numpy(obs))
    got = runtime.predict(obs)
    q = want.q_values.numpy()
    top2 = np.sort(q, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3  # rows whose best action is not a near-tie
    assert clear.sum() >= 500
    np.testing.assert_array_equal(np.asarray(got.actions)[clear], want.actions.numpy()[clear])


def test_a_failed_verification_writes_nothing(tmp_path: Path) -> None:
    model = HamletModel.load(DEMO["simple"])
    out = tmp_path / "tight.onnx"
    with pytest.raises(ExportVerificationError, match="x the tolerance") as caught:
        export_verified(model, out, atol=1e-9, rtol=0.0)
    assert caught.value.report is not None and caught.value.report.onnx_path == str(out)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    out.write_bytes(b"previous")
    with pytest.raises(ExportVerificationError):
        export_verified(model, out, atol=1e-9, rtol=0.0)
    assert out.read_bytes() == b"previous"  # an existing file is left as it was


def test_cli_exports_verifies_and_checks_the_demo_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for kind, checkpoint in DEMO.items():
        out = tmp_path / f"{kind}.onnx"
        assert cli.main(["export-onnx", str(checkpoint), str(out), "--verify"]) == 0
        assert "PASSED" in capsys.readouterr().out
        assert cli.main(["verify-onnx", str(out), str(checkpoint)]) == 0
        assert "PASSED" in capsys.readouterr().out
    tight = tmp_path / "tight.onnx"
    argv = ["export-onnx", str(DEMO["simple"]), str(tight), "--verify", "--atol", "1e-9", "--rtol", "0"]
    assert cli.main(argv) == 1
    assert "was not written" in capsys.readouterr().err and not tight.exists()
    strict = ["--rtol", "0", "--atol", "1e-9"]
    assert cli.main(["verify-onnx", str(tmp_path / "simple.onnx"), str(DEMO["simple"]), *strict]) == 1


def test_verify_report_names_both_worst_cases(demo: HamletModel, tmp_path: Path) -> None:
    path, _ = export_verified(demo, tmp_path / "demo.onnx")
    report = verify_onnx_export(path, demo, batch_sizes=(3,), rollout_steps=5)
    assert list(report.diffs_by_check) == ["batch=3", "rollout=5"]
    assert set(report.max_abs_diff) == set(report.max_rel_diff) == set(report.max_tolerance_ratio)
