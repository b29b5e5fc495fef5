"""Checkpoint loading: Hamlet v2 files, inference_v1 round trips, and every way a file can be bad."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from hamlet_runs import make_network, retag_as_cuda, write_training_checkpoint

from townlet.agent.brain import brain_spec_from_network, brain_spec_hash
from townlet.inference import (
    INFERENCE_V1,
    TRAINING_V2,
    CheckpointError,
    HamletModel,
    UnsafeCheckpointError,
    save_inference_checkpoint,
)
from townlet.inference.checkpoint import infer_network_params


def _obs(model: HamletModel, batch: int = 5) -> torch.Tensor:
    return torch.rand(batch, model.obs_dim, generator=torch.Generator().manual_seed(1))


def _same_q(model: HamletModel, network: torch.nn.Module) -> None:
    obs = _obs(model)
    with torch.no_grad():
        expected, _ = network(obs)
    assert torch.equal(model.predict(obs).q_values, expected)


def test_training_checkpoint_loads_exactly(
    training_checkpoint: Path, raw_network: torch.nn.Module, network_type: str
) -> None:
    model = HamletModel.load_from_training_checkpoint(training_checkpoint)
    _same_q(model, raw_network)
    meta = model.metadata
    assert meta["format_version"] == TRAINING_V2 and meta["network_type"] == network_type
    assert (meta["episode"], meta["epsilon"], meta["curriculum_stage"]) == (100, 0.6058, 3)
    assert meta["created_at"] == 1_762_000_100.0 and meta["config_dir"].startswith("configs/L")
    assert meta["action_dim"] == 6  # from q_head.3 / net.6, not universe_metadata's hard-coded 5
    assert meta["obs_dim"] == (91 if network_type == "simple" else 54)
    assert len(meta["sha256"]) == 64 and meta["num_parameters"] == model.num_parameters
    assert not model.network.training


def test_load_detects_format(training_checkpoint: Path, tmp_path: Path) -> None:
    v2 = HamletModel.load(training_checkpoint)
    v1_path = v2.save(tmp_path / "model_ep00100.pt")
    v1 = HamletModel.load(v1_path)
    assert (v2.metadata["format_version"], v1.metadata["format_version"]) == (TRAINING_V2, INFERENCE_V1)
    obs = _obs(v1)
    assert torch.equal(v1.predict(obs).q_values, v2.predict(obs).q_values)
    assert v1.metadata["episode"] == 100 and v1.metadata["epsilon"] == 0.6058


@pytest.mark.parametrize("with_spec", [False, True])
def test_inference_round_trip_both_variants(tmp_path: Path, network_type: str, with_spec: bool) -> None:
    network = make_network(network_type, seed=3).eval()
    spec = brain_spec_from_network(network) if with_spec else None
    path = save_inference_checkpoint(network, tmp_path / "model_ep00007.pt", {"episode": 7, "epsilon": 0.1}, spec)
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == INFERENCE_V1
    assert ("brain_spec" in raw) == with_spec and ("network_params" in raw) != with_spec
    assert raw["metadata"]["training_episode"] == 7  # the seed's key names inside the file
    model = HamletModel.load_from_checkpoint(path)
    _same_q(model, network)
    assert model.metadata["brain_spec_hash"] == (brain_spec_hash(spec) if spec else None)
    assert model.metadata["episode"] == 7


def test_inference_checkpoint_is_written_atomically(tmp_path: Path) -> None:
    network = make_network("simple")
    path = tmp_path / "model_ep00001.pt"
    save_inference_checkpoint(network, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_ep00001.pt"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a server running as another user


def test_cuda_saved_file_loads_on_cpu(training_checkpoint: Path, raw_network: torch.nn.Module) -> None:
    retag_as_cuda(training_checkpoint)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(training_checkpoint, weights_only=True)  # what upstream's loaders would hit
    model = HamletModel.load(training_checkpoint, "cpu")
    assert model.device.type == "cpu"
    _same_q(model, raw_network)


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("this must never run",))


def test_unsafe_pickle_is_refused_without_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    network = make_network("simple")
    torch.save(
        {
            "format_version": INFERENCE_V1,
            "state_dict": network.state_dict(),
            "payload": _Evil(),
            "network_params": {"network_type": "simple", "obs_dim": 91, "action_dim": 6},
        },
        path,
    )
    with pytest.raises(UnsafeCheckpointError) as info:
        HamletModel.load(path)
    assert "builtins.print" in info.value.globals_needed
    assert "trust_pickle=True" in str(info.value) and str(path) in str(info.value)
    assert "must never run" not in capsys.readouterr().out
    model = HamletModel.load(path, trust_pickle=True)  # the caller says it trusts the file
    assert "must never run" in capsys.readouterr().out
    assert model.obs_dim == 91


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p, ok: p / "missing.pt", "no such file"),
        (lambda p, ok: _write(p / "junk.pt", b"definitely not a checkpoint"), "not a readable torch checkpoint"),
        (
            lambda p, ok: _write(p / "cut.pt", ok.read_bytes()[: len(ok.read_bytes()) // 2]),
            "not a readable torch checkpoint",
        ),
        (lambda p, ok: _save(p / "list.pt", [1, 2, 3]), "not an inference checkpoint"),
        (lambda p, ok: _save(p / "v9.pt", {"format_version": "inference_v9"}), "unknown format_version"),
        (lambda p, ok: _save(p / "nostate.pt", {"format_version": INFERENCE_V1, "state_dict": {}}), "not a state_dict"),
        (
            lambda p, ok: _save(
                p / "noparams.pt", {"format_version": INFERENCE_V1, "state_dict": make_network("simple").state_dict()}
            ),
            "neither 'brain_spec' nor 'network_params'",
        ),
        (
            lambda p, ok: _save(
                p / "mismatch.pt",
                {
                    "format_version": INFERENCE_V1,
                    "state_dict": make_network("simple").state_dict(),
                    "network_params": {"network_type": "simple", "obs_dim": 54, "action_dim": 6},
                },
            ),
            "weights do not match",
        ),
        (
            lambda p, ok: _save(
                p / "badparams.pt",
                {
                    "format_version": INFERENCE_V1,
                    "state_dict": make_network("simple").state_dict(),
                    "network_params": {"network_type": "lstm", "action_dim": 6},
                },
            ),
            "network_type",
        ),
    ],
    ids=[
        "missing",
        "garbage",
        "truncated",
        "not-a-dict",
        "unknown-version",
        "empty-state",
        "no-params",
        "weights-mismatch",
        "bad-params",
    ],
)
def test_bad_files_raise_checkpoint_error(tmp_path: Path, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    good = save_inference_checkpoint(make_network("simple"), tmp_path / "good.pt")
    path = make(tmp_path, good)
    with pytest.raises(CheckpointError, match=reason) as info:
        HamletModel.load(path)
    assert info.value.path == str(path)


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def test_training_checkpoint_errors(tmp_path: Path) -> None:
    path = write_training_checkpoint(tmp_path, "recurrent")
    ckpt = torch.load(path, weights_only=True)
    ckpt["training_config"]["population"]["network_type"] = "simple"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="network_type='simple' but the weights are a 'recurrent'"):
        HamletModel.load_from_training_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a Hamlet training checkpoint"):
        HamletModel.load_from_training_checkpoint(save_inference_checkpoint(make_network("simple"), tmp_path / "m.pt"))
    ckpt["population_state"]["q_network"].pop("q_head.3.weight")
    del ckpt["training_config"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"no 'q_head\.3\.weight'"):
        HamletModel.load_from_training_checkpoint(path)


def test_network_type_from_keys_without_training_config(
    tmp_path: Path, raw_network: torch.nn.Module, network_type: str
) -> None:
    path = write_training_checkpoint(tmp_path, network_type)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["training_config"]
    torch.save(ckpt, path)
    model = HamletModel.load(path)
    assert model.metadata["network_type"] == network_type
    _same_q(model, raw_network)


def test_architecture_read_from_weights_not_kernel() -> None:
    # Reference 2.3: window size comes from vision_encoder.5 (32*w^2 inputs), not the 3x3 conv kernel, and
    # affordance width from affordance_encoder.0 (15 inputs -> 14 types).
    from townlet.agent.networks import RecurrentSpatialQNetwork

    params = infer_network_params(RecurrentSpatialQNetwork(action_dim=4, window_size=7, num_meters=12).state_dict())
    assert params == {
        "network_type": "recurrent",
        "action_dim": 4,
        "window_size": 7,
        "num_meters": 12,
        "num_affordance_types": 14,
        "hidden_dim": 256,
    }


def test_v2_file_contains_only_weights_only_globals(training_checkpoint: Path) -> None:
    torch.load(training_checkpoint, weights_only=True)  # raises if anything beyond tensors/containers is in it
    with pytest.raises(pickle.UnpicklingError):
        torch.load(_save(training_checkpoint.parent / "x.pt", {"e": _Evil()}), weights_only=True)


def _poison(network: torch.nn.Module, name: str, count: int, value: float) -> None:
    with torch.no_grad():
        dict(network.named_parameters())[name].view(-1)[:count] = value


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path, network_type: str, value: float) -> None:
    """What a diverged training run writes must not load (it would answer NaN Q-values and action 0)."""
    network = make_network(network_type, seed=1)
    name = next(iter(dict(network.named_parameters())))
    _poison(network, name, 3, value)
    path = HamletModel(network).save(tmp_path / "model_ep00900.pt")
    kind = "NaN" if value != value else "Inf"
    total = dict(network.named_parameters())[name].numel()
    with pytest.raises(CheckpointError, match=f"non-finite weights .*{name}: 3 of {total} values are {kind}"):
        HamletModel.load(path)


def test_inspect_exits_non_zero_on_a_diverged_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from townlet.inference import cli

    network = make_network("simple", seed=1)
    for param in network.parameters():
        _poison(network, next(n for n, p in network.named_parameters() if p is param), param.numel(), float("nan"))
    path = HamletModel(network).save(tmp_path / "model_ep00900.pt")
    assert cli.main(["inspect", str(path)]) != 0
    assert "values are NaN" in capsys.readouterr().err


def test_a_nan_training_checkpoint_is_refused(tmp_path: Path) -> None:
    path = write_training_checkpoint(tmp_path, "recurrent")
    obj = torch.load(path, weights_only=True)
    weights = obj["population_state"]["q_network"]
    key = next(iter(weights))
    weights[key] = torch.full_like(weights[key], float("nan"))
    torch.save(obj, path)
    with pytest.raises(
        CheckpointError, match=f"{key}: {weights[key].numel()} of {weights[key].numel()} values are NaN"
    ):
        HamletModel.load(path)


@pytest.mark.parametrize("with_spec", [False, True])
def test_fast_load_gives_bitwise_equal_weights(tmp_path: Path, network_type: str, with_spec: bool) -> None:
    """The loaders build on the meta device and adopt the file's tensors: every weight is the saved one, bit
    for bit, in float32 on the CPU, with nothing left on the meta device, for both formats."""
    network = make_network(network_type, seed=5).eval()
    spec = brain_spec_from_network(network) if with_spec else None
    inference = save_inference_checkpoint(network, tmp_path / "model_ep00005.pt", brain_spec=spec)
    training = write_training_checkpoint(tmp_path / "run", network_type)
    expected_training = torch.load(training, weights_only=True)["population_state"]["q_network"]
    for path, expected in ((inference, network.state_dict()), (training, expected_training)):
        loaded = HamletModel.load(path).network.state_dict(keep_vars=True)
        assert loaded.keys() == expected.keys()
        for name, tensor in loaded.items():
            assert tensor.device.type == "cpu" and tensor.dtype == torch.float32, name
            assert torch.equal(tensor.detach().view(torch.int32), expected[name].view(torch.int32)), name


def test_fast_load_casts_to_the_declared_dtype_and_stays_trainable(tmp_path: Path) -> None:
    """A float64 file loads as the float32 network a copying load_state_dict would give; parameters keep
    requires_grad (the adopted tensors are Parameters, not plain tensors)."""
    network = make_network("recurrent", seed=6).eval()
    path = save_inference_checkpoint(network.double(), tmp_path / "model_ep00006.pt")
    model = HamletModel.load(path)
    for name, param in model.network.named_parameters():
        assert isinstance(param, torch.nn.Parameter) and param.requires_grad and param.dtype == torch.float32
        assert torch.equal(param.detach(), dict(network.named_parameters())[name].detach().float()), name
    lstm = model.network.lstm
    assert all(w is getattr(lstm, n) for w, n in zip(lstm._flat_weights, lstm._flat_weights_names, strict=True))


def test_a_legacy_format_pickle_is_refused_naming_its_global_without_torch_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.save's pre-zip format: torch cannot list its globals beforehand; its refusal names one, in a page of
    advice in ANSI bold. Ours names the global and the trust flag, and trusting it loads it."""
    path = tmp_path / "legacy.pt"
    network = make_network("simple")
    checkpoint = {
        "format_version": INFERENCE_V1,
        "state_dict": network.state_dict(),
        "payload": _Evil(),
        "network_params": {"network_type": "simple", "obs_dim": 91, "action_dim": 6},
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError) as info:
        HamletModel.load(path)
    assert info.value.globals_needed == ["print"] and "trust_pickle=True" in str(info.value)  # torch names builtins so
    assert "\x1b" not in str(info.value) and "weights_only` set to `False`" not in str(info.value)
    assert "must never run" not in capsys.readouterr().out
    assert HamletModel.load(path, trust_pickle=True).obs_dim == 91


def test_a_plain_pickle_gets_our_reason_not_torch_advice(tmp_path: Path) -> None:
    path = _write(tmp_path / "plain.pt", pickle.dumps({"state_dict": {}}, protocol=4))
    with pytest.raises(CheckpointError) as info:
        HamletModel.load(path)
    assert str(info.value) == (
        f"{path}: not a readable torch checkpoint: weights_only unpickling refused it (Unsupported operand 149); "
        "nothing in it was run"
    )


def test_first_line_quotes_a_foreign_error_without_terminal_escapes() -> None:
    from townlet.inference.errors import first_line

    assert first_line(RuntimeError("\x1b[1mbold\x1b[0m advice\nsecond line")) == "bold advice"
