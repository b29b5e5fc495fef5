"""ONNX export and its verification: interface, metadata, self-contained file, numbers, tampering, mismatches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hamlet_runs import make_network
from onnx import numpy_helper

from townlet.agent.networks import SimpleQNetwork
from townlet.inference.errors import CheckpointError, InferenceError, InvalidInputError
from townlet.inference.model import HamletModel
from townlet.inference.onnx_export import (
    ExportVerificationError,
    export_to_onnx,
    graph_weights_sha256,
    verify_onnx_export,
    weights_sha256,
)
from townlet.inference.onnx_runtime import OnnxModel

torch.set_num_threads(1)

NAMES = {
    "simple": (["obs"], ["q_values"]),
    "recurrent": (["obs", "hidden_h", "hidden_c"], ["q_values", "new_hidden_h", "new_hidden_c"]),
}


@pytest.fixture(scope="module", params=["simple", "recurrent"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[HamletModel, Path]:
    """A model loaded from an inference checkpoint (so it has a sha256) and its ONNX export, in a folder alone."""
    folder = tmp_path_factory.mktemp(f"onnx_{request.param}")
    checkpoint = HamletModel(make_network(request.param, seed=7)).save(folder / "ckpt" / "model.pt")
    model = HamletModel.load(checkpoint)
    path = export_to_onnx(model, folder / "out" / "model.onnx")
    return model, path


def _rewrite(source: Path, target: Path, edit: object) -> Path:
    proto = onnx.load(str(source))
    edit(proto)  # type: ignore[operator]
    onnx.save(proto, str(target))
    return target


def _nudge_largest_initializer(proto: onnx.ModelProto) -> None:
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(init).copy()
    values.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(values, init.name))


# --------------------------------------------------------------------------- the file


def test_export_is_one_self_contained_file(exported: tuple[HamletModel, Path]) -> None:
    model, path = exported
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no external data file beside it
    proto = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert path.stat().st_size >= 4 * model.num_parameters  # every fp32 weight is inside the file


def test_interface_names_and_dynamic_batch_axis(exported: tuple[HamletModel, Path]) -> None:
    model, path = exported
    kind = str(model.metadata["network_type"])
    proto = onnx.load(str(path))
    inputs, outputs = NAMES[kind]
    assert [i.name for i in proto.graph.input] == inputs
    assert [o.name for o in proto.graph.output] == outputs
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        batch_axis = 1 if "hidden" in value.name else 0
        assert dims[batch_axis].dim_param == "batch", value.name
        assert all(d.dim_value > 0 for i, d in enumerate(dims) if i != batch_axis), value.name
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 513):
        feeds = {"obs": np.random.default_rng(batch).random((batch, model.obs_dim), dtype=np.float32)}
        if model.hidden_dim is not None:
            feeds["hidden_h"] = feeds["hidden_c"] = np.zeros((1, batch, model.hidden_dim), np.float32)
        shapes = [out.shape for out in session.run(None, feeds)]
        expected = [(batch, model.action_dim)]
        if model.hidden_dim is not None:
            expected += [(1, batch, model.hidden_dim)] * 2
        assert shapes == expected


def test_metadata_props_describe_model_and_source(exported: tuple[HamletModel, Path]) -> None:
    model, path = exported
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["format"] == "hamlet_onnx_v1"
    assert props["network_type"] == model.metadata["network_type"]
    assert props["obs_dim"] == str(model.obs_dim)
    assert props["action_dim"] == "6"
    assert props["hidden_dim"] == ("256" if model.is_recurrent else "none")
    assert props["checkpoint_sha256"] == model.metadata["sha256"] and len(props["checkpoint_sha256"]) == 64
    assert props["weights_sha256"] == weights_sha256(model.network)
    assert props["graph_weights_sha256"] == graph_weights_sha256(onnx.load(str(path)))
    assert props["torch_version"] == torch.__version__
    assert props["opset"] == "17"
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 17


def test_in_memory_model_exports_with_no_checkpoint_sha(tmp_path: Path) -> None:
    path = export_to_onnx(HamletModel(SimpleQNetwork(36, 5)), tmp_path / "m.onnx", opset=18)
    meta = OnnxModel(path).metadata
    assert meta["checkpoint_sha256"] is None and meta["opset"] == 18 and meta["obs_dim"] == 36


def test_export_does_not_touch_the_model(tmp_path: Path) -> None:
    model = HamletModel(make_network("recurrent", seed=3))
    model.network.train()
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    export_to_onnx(model, tmp_path / "m.onnx")
    assert model.network.training  # not switched to eval behind the caller's back
    assert all(p.requires_grad for p in model.network.parameters())
    after = model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_export_from_a_cuda_model_leaves_it_on_cuda(tmp_path: Path) -> None:
    model = HamletModel(make_network("recurrent", seed=3)).to("cuda")
    export_to_onnx(model, tmp_path / "m.onnx")
    assert model.device.type == "cuda"
    report = verify_onnx_export(tmp_path / "m.onnx", model)
    assert max(report.max_abs_diff.values()) <= 1e-5


@pytest.mark.parametrize("opset", [16, 21, "17", True])
def test_bad_opset_is_refused(tmp_path: Path, opset: object) -> None:
    with pytest.raises(InvalidInputError, match="opset: expected an int from 17 to 20"):
        export_to_onnx(HamletModel(SimpleQNetwork(36, 5)), tmp_path / "m.onnx", opset=opset)  # type: ignore[arg-type]
    assert not (tmp_path / "m.onnx").exists()


def test_hamlet_model_export_to_onnx_exports_and_verifies(tmp_path: Path) -> None:
    model = HamletModel(make_network("simple", seed=1))
    assert model.export_to_onnx(tmp_path / "m.onnx") == tmp_path / "m.onnx"
    assert OnnxModel(tmp_path / "m.onnx").obs_dim == 91


# --------------------------------------------------------------------------- verification


def test_verification_report_numbers(exported: tuple[HamletModel, Path]) -> None:
    model, path = exported
    report = verify_onnx_export(path, model)
    outputs = NAMES[str(model.metadata["network_type"])][1]
    assert report.passed and report.checker_passed
    assert list(report.diffs_by_check) == ["batch=1", "batch=7", "batch=256", "rollout=50"]
    for diffs in report.diffs_by_check.values():
        assert list(diffs) == outputs
    assert list(report.max_abs_diff) == list(report.max_rel_diff) == list(report.max_tolerance_ratio) == outputs
    assert all(0.0 <= ratio <= 1.0 for ratio in report.max_tolerance_ratio.values())
    assert (report.atol, report.rtol) == (1e-5, 1e-5)
    assert "PASSED" in report.summary() and "rollout=50" in report.summary()


def test_modified_initializer_is_caught(exported: tuple[HamletModel, Path], tmp_path: Path) -> None:
    model, path = exported
    tampered = _rewrite(path, tmp_path / "tampered.onnx", _nudge_largest_initializer)
    with pytest.raises(ExportVerificationError, match="initializers were modified after export"):
        verify_onnx_export(tampered, model)


def test_modified_initializer_with_forged_fingerprint_fails_on_numbers(
    exported: tuple[HamletModel, Path], tmp_path: Path
) -> None:
    model, path = exported

    def forge(proto: onnx.ModelProto) -> None:
        _nudge_largest_initializer(proto)
        for prop in proto.metadata_props:
            if prop.key == "graph_weights_sha256":
                prop.value = graph_weights_sha256(proto)

    forged = _rewrite(path, tmp_path / "forged.onnx", forge)
    with pytest.raises(ExportVerificationError, match=r"q_values: [\d.]+x the tolerance \(max abs diff") as caught:
        verify_onnx_export(forged, model)
    report = caught.value.report
    assert report is not None and not report.passed
    assert report.max_abs_diff["q_values"] > 1e-5 and report.max_tolerance_ratio["q_values"] > 1.0
    assert "FAILED" in report.summary()


def test_truncated_file_is_caught(exported: tuple[HamletModel, Path], tmp_path: Path) -> None:
    model, path = exported
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ExportVerificationError, match="not a readable ONNX file"):
        verify_onnx_export(truncated, model)
    with pytest.raises(CheckpointError, match="onnxruntime cannot load the file"):
        OnnxModel(truncated)


def test_pair_with_other_weights_is_caught(exported: tuple[HamletModel, Path]) -> None:
    model, path = exported
    other = HamletModel(make_network(str(model.metadata["network_type"]), seed=99))
    with pytest.raises(ExportVerificationError, match="do not match: the file was exported from other weights"):
        verify_onnx_export(path, other)


def test_pair_with_other_dims_is_caught(tmp_path: Path) -> None:
    path = export_to_onnx(HamletModel(SimpleQNetwork(91, 6)), tmp_path / "a.onnx")
    with pytest.raises(ExportVerificationError, match="obs_dim 36 in the model, 91 in the file"):
        verify_onnx_export(path, HamletModel(SimpleQNetwork(36, 6)))
    with pytest.raises(ExportVerificationError, match="network_type recurrent in the model, simple in the file"):
        verify_onnx_export(path, HamletModel(make_network("recurrent")))


def test_file_without_hamlet_metadata_is_refused(exported: tuple[HamletModel, Path], tmp_path: Path) -> None:
    model, path = exported
    bare = _rewrite(path, tmp_path / "bare.onnx", lambda proto: proto.ClearField("metadata_props"))
    with pytest.raises(ExportVerificationError, match="not a Hamlet ONNX export"):
        verify_onnx_export(bare, model)
    with pytest.raises(CheckpointError, match="not a Hamlet ONNX export"):
        OnnxModel(bare)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ExportVerificationError, match="no such file"):
        verify_onnx_export(tmp_path / "nope.onnx", HamletModel(SimpleQNetwork(36, 5)))
    assert issubclass(ExportVerificationError, InferenceError)
