"""`OnnxModel`: torch-free, and the same `predict` contract and numbers as `HamletModel`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hamlet_runs import make_network

from townlet.inference.errors import CheckpointError, InvalidInputError
from townlet.inference.model import HamletModel
from townlet.inference.onnx_export import export_to_onnx
from townlet.inference.onnx_runtime import OnnxModel, OnnxPredictResult, epsilon_greedy_numpy, make_session_options

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["simple", "recurrent"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[HamletModel, OnnxModel]:
    model = HamletModel(make_network(request.param, seed=11))
    path = export_to_onnx(model, tmp_path_factory.mktemp("ort") / f"{request.param}.onnx")
    return model, OnnxModel(path)


@pytest.mark.slow  # starts a Python process
def test_importing_the_predictor_does_not_import_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "import townlet.inference.onnx_runtime as rt\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "rt.epsilon_greedy_numpy(np.zeros((2, 3), np.float32), 0.5, None, np.random.default_rng(0))\n"
        "assert 'torch' not in sys.modules\n"
        "print('torch-free')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch-free"


def test_properties_come_from_metadata(pair: tuple[HamletModel, OnnxModel]) -> None:
    model, onnx_model = pair
    assert onnx_model.obs_dim == model.obs_dim
    assert onnx_model.action_dim == model.action_dim
    assert onnx_model.is_recurrent == model.is_recurrent
    assert onnx_model.hidden_dim == model.hidden_dim
    assert onnx_model.metadata["network_type"] == model.metadata["network_type"]
    assert "OnnxModel(" in repr(onnx_model)


def test_greedy_rollout_equals_hamlet_model(pair: tuple[HamletModel, OnnxModel]) -> None:
    model, onnx_model = pair
    rng = np.random.default_rng(0)
    torch_hidden: Any = None
    ort_hidden: Any = None
    for _ in range(30):
        obs = rng.random((5, model.obs_dim), dtype=np.float32)
        want = model.predict(obs, torch_hidden)
        got = onnx_model.predict(obs, ort_hidden)
        assert isinstance(got, OnnxPredictResult)
        assert got.actions.dtype == np.int64 and got.q_values.dtype == np.float32
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_allclose(got.q_values, want.q_values, rtol=0, atol=1e-5)
        if model.is_recurrent:
            for ours, theirs in zip(got.hidden, want.hidden, strict=True):  # type: ignore[arg-type]
                assert ours.shape == (1, 5, 256)
                np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
        else:
            assert got.hidden is None and want.hidden is None
        torch_hidden, ort_hidden = want.hidden, got.hidden
    assert got["actions"] is got.actions


def test_one_observation_is_a_batch_of_one(pair: tuple[HamletModel, OnnxModel]) -> None:
    model, onnx_model = pair
    obs = np.random.default_rng(1).random(model.obs_dim, dtype=np.float32)
    result = onnx_model.predict(obs.tolist())
    assert result.actions.shape == (1,) and result.q_values.shape == (1, model.action_dim)
    np.testing.assert_allclose(result.q_values, model.predict(obs).q_values, atol=1e-5)


def test_predict_does_not_change_its_inputs(pair: tuple[HamletModel, OnnxModel]) -> None:
    model, onnx_model = pair
    obs = np.random.default_rng(2).random((3, model.obs_dim), dtype=np.float32)
    hidden = None
    if model.is_recurrent:
        hidden = (np.full((1, 3, 256), 0.25, np.float32), np.full((1, 3, 256), -0.25, np.float32))
    copies = (obs.copy(), None if hidden is None else (hidden[0].copy(), hidden[1].copy()))
    first = onnx_model.predict(obs, hidden)
    second = onnx_model.predict(obs, hidden)
    np.testing.assert_array_equal(obs, copies[0])
    if hidden is not None:
        np.testing.assert_array_equal(hidden[0], copies[1][0])  # type: ignore[index]
        np.testing.assert_array_equal(hidden[1], copies[1][1])  # type: ignore[index]
    np.testing.assert_array_equal(first.q_values, second.q_values)


def test_masked_greedy_matches_hamlet_model(pair: tuple[HamletModel, OnnxModel]) -> None:
    model, onnx_model = pair
    rng = np.random.default_rng(3)
    obs = rng.random((64, model.obs_dim), dtype=np.float32)
    mask = rng.random((64, model.action_dim)) < 0.4
    mask[np.arange(64), rng.integers(0, model.action_dim, 64)] = True  # every row allows something
    got = onnx_model.predict(obs, action_mask=mask)
    want = model.predict(obs, action_mask=mask)
    np.testing.assert_array_equal(got.actions, want.actions)
    assert mask[np.arange(64), got.actions].all()
    masked_q = np.where(mask, got.q_values, -np.inf)
    np.testing.assert_array_equal(got.actions, masked_q.argmax(axis=1))


def test_epsilon_one_is_uniform_over_valid_actions(pair: tuple[HamletModel, OnnxModel]) -> None:
    _, onnx_model = pair
    batch = 6000
    obs = np.zeros((batch, onnx_model.obs_dim), np.float32)
    mask = np.zeros((batch, onnx_model.action_dim), bool)
    mask[:, [0, 2, 5]] = True
    actions = onnx_model.predict(obs, epsilon=1.0, action_mask=mask, generator=0).actions
    counts = np.bincount(actions, minlength=onnx_model.action_dim)
    assert counts[[1, 3, 4]].sum() == 0
    # each valid action 2000 +- 5 sigma (sigma = sqrt(6000 * 1/3 * 2/3) ~ 36.5)
    assert np.all(np.abs(counts[[0, 2, 5]] - batch / 3) < 5 * 36.5), counts


def test_epsilon_is_drawn_per_sample() -> None:
    q = np.tile(np.array([[0.0, 1.0, 0.0, 0.0]], np.float32), (10000, 1))
    actions = epsilon_greedy_numpy(q, 0.2, None, np.random.default_rng(0))
    non_greedy = float((actions != 1).mean())
    assert abs(non_greedy - 0.2 * 3 / 4) < 0.02  # explore 20 %, and 3 of 4 random picks are not the greedy one


def test_exploration_is_reproducible_with_a_seed_or_generator(pair: tuple[HamletModel, OnnxModel]) -> None:
    _, onnx_model = pair
    obs = np.random.default_rng(4).random((200, onnx_model.obs_dim), dtype=np.float32)
    a = onnx_model.predict(obs, epsilon=0.5, generator=42).actions
    b = onnx_model.predict(obs, epsilon=0.5, generator=np.random.default_rng(42)).actions
    c = onnx_model.predict(obs, epsilon=0.5, generator=43).actions
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _bad_inputs(obs_dim: int, action_dim: int, recurrent: bool) -> list[dict[str, Any]]:
    good = np.zeros((2, obs_dim), np.float32)
    cases: list[dict[str, Any]] = [
        {"obs": np.zeros((2, 10), np.float32)},
        {"obs": np.zeros((2, obs_dim), np.int64)},
        {"obs": np.zeros((0, obs_dim), np.float32)},
        {"obs": np.zeros((2, 3, obs_dim), np.float32)},
        {"obs": np.where(np.eye(2, obs_dim) > 0, np.nan, 0.0).astype(np.float32)},
        {"obs": (good, {})},
        {"obs": good, "epsilon": 1.5},
        {"obs": good, "epsilon": True},
        {"obs": good, "action_mask": np.ones((2, action_dim), np.int64)},
        {"obs": good, "action_mask": np.ones((3, action_dim), bool)},
        {"obs": good, "action_mask": np.array([[True] * action_dim, [False] * action_dim])},
    ]
    if recurrent:
        cases.append({"obs": good, "hidden": (np.zeros((1, 3, 256), np.float32), np.zeros((1, 3, 256), np.float32))})
        cases.append({"obs": good, "hidden": (np.zeros((1, 2, 256), np.float32), np.full((1, 2, 256), np.inf))})
    else:
        cases.append({"obs": good, "hidden": (np.zeros((1, 2, 8)), np.zeros((1, 2, 8)))})
    return cases


def test_invalid_inputs_raise_the_same_messages_as_hamlet_model(pair: tuple[HamletModel, OnnxModel]) -> None:
    model, onnx_model = pair
    for kwargs in _bad_inputs(model.obs_dim, model.action_dim, model.is_recurrent):
        with pytest.raises(InvalidInputError) as ours:
            onnx_model.predict(**kwargs)
        with pytest.raises(InvalidInputError) as theirs:
            model.predict(**kwargs)
        # same text, except that a numpy dtype prints as float64 where torch prints torch.float64
        assert str(ours.value) == str(theirs.value).replace("torch.", ""), kwargs


def test_bad_hidden_container_and_generator(pair: tuple[HamletModel, OnnxModel]) -> None:
    model, onnx_model = pair
    obs = np.zeros((2, model.obs_dim), np.float32)
    if model.is_recurrent:
        with pytest.raises(InvalidInputError, match=r"hidden: expected a pair \(h, c\) of arrays shaped \[1, 2, 256\]"):
            onnx_model.predict(obs, hidden=np.zeros((1, 2, 256), np.float32))
    with pytest.raises(InvalidInputError, match=r"generator: expected a numpy\.random\.Generator, an int seed or None"):
        onnx_model.predict(obs, epsilon=0.5, generator="seed")  # type: ignore[arg-type]


def test_initial_hidden(pair: tuple[HamletModel, OnnxModel]) -> None:
    model, onnx_model = pair
    if model.is_recurrent:
        h, c = onnx_model.initial_hidden(3)
        assert h.shape == c.shape == (1, 3, 256) and not h.any() and h is not c
    else:
        with pytest.raises(InvalidInputError, match="no hidden state"):
            onnx_model.initial_hidden(3)


def test_session_options_for_small_models() -> None:
    options = make_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert make_session_options(3).intra_op_num_threads == 3
    with pytest.raises(InvalidInputError, match="num_threads: expected an int >= 1, got 0"):
        make_session_options(0)


def test_loading_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        OnnxModel(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not a protobuf" * 10)
    with pytest.raises(CheckpointError, match="onnxruntime cannot load the file"):
        OnnxModel(junk)


def test_greedy_predict_builds_no_generator(
    pair: tuple[HamletModel, OnnxModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At epsilon 0 no numpy Generator is built (the serving default), with or without a mask or a seed;
    with epsilon > 0 one is, and the seed is still honoured."""
    _, onnx_model = pair
    obs = np.random.default_rng(5).random((4, onnx_model.obs_dim), dtype=np.float32)
    mask = np.ones((4, onnx_model.action_dim), bool)
    built: list[object] = []
    real = np.random.default_rng
    monkeypatch.setattr(np.random, "default_rng", lambda *a: built.append(a) or real(*a))
    greedy = onnx_model.predict(obs).actions
    masked = onnx_model.predict(obs, action_mask=mask, generator=7).actions
    assert built == [] and greedy.dtype == np.int64
    np.testing.assert_array_equal(greedy, masked)
    explored = onnx_model.predict(obs, epsilon=0.5, generator=7).actions
    assert built == [(7,)]
    np.testing.assert_array_equal(explored, epsilon_greedy_numpy(onnx_model.forward(obs)[0], 0.5, None, real(7)))


def test_fast_and_general_input_paths_agree(pair: tuple[HamletModel, OnnxModel]) -> None:
    """A C-contiguous float32 batch (checked for finiteness only) answers exactly what the same values as a
    list, as float64 or as a strided view answer after conversion."""
    _, onnx_model = pair
    rng = np.random.default_rng(6)
    wide = rng.random((3, 2 * onnx_model.obs_dim), dtype=np.float32)
    obs = np.ascontiguousarray(wide[:, ::2])
    hidden = None
    if onnx_model.is_recurrent:
        hidden = onnx_model.predict(obs).hidden
    fast = onnx_model.predict(obs, hidden)
    for variant in (obs.tolist(), obs.astype(np.float64), wide[:, ::2]):
        slow_hidden = None if hidden is None else (hidden[0].astype(np.float64), hidden[1].tolist())
        other = onnx_model.predict(variant, slow_hidden)
        np.testing.assert_array_equal(other.q_values, fast.q_values)
        np.testing.assert_array_equal(other.actions, fast.actions)
        if fast.hidden is not None:
            assert other.hidden is not None
            np.testing.assert_array_equal(other.hidden[0], fast.hidden[0])


def test_non_finite_float32_state_is_refused_on_the_fast_path(pair: tuple[HamletModel, OnnxModel]) -> None:
    _, onnx_model = pair
    obs = np.zeros((3, onnx_model.obs_dim), np.float32)
    obs[1, 0] = np.inf
    with pytest.raises(InvalidInputError, match=r"obs: expected finite values, got NaN or Inf in row\(s\) \[1\]"):
        onnx_model.predict(obs)
    if onnx_model.is_recurrent:
        h, c = onnx_model.initial_hidden(3)
        c[0, 2, 5] = np.nan
        with pytest.raises(
            InvalidInputError, match=r"hidden c: expected finite values, got NaN or Inf in row\(s\) \[2\]"
        ):
            onnx_model.predict(np.zeros((3, onnx_model.obs_dim), np.float32), (h, c))
