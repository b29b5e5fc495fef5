"""HamletModel.predict: pure, exact, epsilon-greedy with masks, and clear errors for bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hamlet_runs import make_network
from hypothesis import given, settings
from hypothesis import strategies as st

from townlet.inference import HamletModel, InvalidInputError


@pytest.fixture
def model(network_type: str) -> HamletModel:
    return HamletModel(make_network(network_type, seed=5))


def _obs(model: HamletModel, batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, model.obs_dim, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_dtypes(model: HamletModel) -> None:
    result = model.predict(_obs(model, 4))
    assert result.actions.shape == (4,) and result.actions.dtype == torch.int64
    assert result.q_values.shape == (4, 6) and result.q_values.dtype == torch.float32
    if model.is_recurrent:
        assert [list(t.shape) for t in result.hidden] == [[1, 4, 256], [1, 4, 256]]
    else:
        assert result.hidden is None
    assert result["actions"] is result.actions  # the seed's dict-style access works too
    single = model.predict(_obs(model, 1)[0])  # one observation [obs_dim] -> a batch of one
    assert single.actions.shape == (1,)


def test_predict_is_pure(model: HamletModel) -> None:
    obs = _obs(model, 6)
    hidden = model.predict(obs).hidden
    obs_before = obs.clone()
    hidden_before = None if hidden is None else tuple(t.clone() for t in hidden)
    weights_before = copy.deepcopy(model.network.state_dict())
    first = model.predict(obs, hidden, epsilon=0.5, generator=torch.Generator().manual_seed(9))
    second = model.predict(obs, hidden, epsilon=0.5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first.actions, second.actions) and torch.equal(first.q_values, second.q_values)
    assert torch.equal(obs, obs_before)
    if hidden is not None:
        assert all(torch.equal(a, b) for a, b in zip(hidden, hidden_before, strict=True))
    assert all(torch.equal(v, weights_before[k]) for k, v in model.network.state_dict().items())


def test_numpy_and_list_inputs_match_tensor(model: HamletModel) -> None:
    obs = _obs(model, 3)
    expected = model.predict(obs).q_values
    assert torch.equal(model.predict(obs.numpy()).q_values, expected)
    assert torch.equal(model.predict(obs.numpy().astype(np.float64)).q_values, expected)
    assert torch.equal(model.predict(obs.tolist()).q_values, expected)


def test_recurrent_rollout_carries_state() -> None:
    model = HamletModel(make_network("recurrent", seed=2))
    obs = _obs(model, 20)
    hidden = None
    for t in range(20):
        step = model.predict(obs[t : t + 1], hidden)
        with torch.no_grad():
            expected, _ = model.network(obs[t : t + 1], hidden)
        assert torch.equal(step.q_values, expected)
        hidden = step.hidden
    assert not torch.equal(model.predict(obs[19:20], hidden).q_values, model.predict(obs[19:20]).q_values)


def test_epsilon_zero_is_masked_greedy(model: HamletModel) -> None:
    obs = _obs(model, 64)
    q = model.predict(obs).q_values
    assert torch.equal(model.predict(obs).actions, q.argmax(dim=1))
    mask = torch.ones(64, 6, dtype=torch.bool)
    mask[torch.arange(64), q.argmax(dim=1)] = False  # forbid each row's best action
    masked = model.predict(obs, action_mask=mask).actions
    assert torch.equal(masked, q.masked_fill(~mask, float("-inf")).argmax(dim=1))
    assert bool(mask[torch.arange(64), masked].all())


def test_epsilon_one_is_uniform_over_valid_actions(model: HamletModel) -> None:
    n = 6000
    obs = _obs(model, 1).expand(n, -1)
    mask = torch.tensor([[True, False, True, True, False, True]]).expand(n, -1)
    actions = model.predict(obs, epsilon=1.0, action_mask=mask, generator=torch.Generator().manual_seed(0)).actions
    counts = torch.bincount(actions, minlength=6)
    assert counts[1] == 0 and counts[4] == 0
    # 4 valid actions, 1500 expected each; binomial sd ~ 33.5, so +-200 is a > 5 sigma band.
    assert all(abs(int(counts[a]) - 1500) < 200 for a in (0, 2, 3, 5)), counts


def test_intermediate_epsilon_explores_per_sample(model: HamletModel) -> None:
    n = 4000
    obs = _obs(model, 1).expand(n, -1)
    greedy = int(model.predict(obs[:1]).actions[0])
    actions = model.predict(obs, epsilon=0.3, generator=torch.Generator().manual_seed(1)).actions
    # P(not greedy) = 0.3 * 5/6 = 0.25; sd of the fraction ~ 0.007
    frac = float((actions != greedy).float().mean())
    assert 0.21 < frac < 0.29, frac


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"obs": "wide"}, r"expected shape \[\d+\] or \[B, \d+\], got \[2, \d+\]"),
        ({"obs": "rank3"}, r"expected shape .* got \[1, 2, \d+\]"),
        ({"obs": "ints"}, "expected a float array, got dtype torch.int64"),
        ({"obs": "nan"}, r"NaN or Inf in row\(s\) \[1\]"),
        ({"obs": "empty"}, "empty batch"),
        ({"obs": "tuple"}, r"\(observation, info\) tuple"),
        ({"epsilon": 1.5}, r"epsilon: expected a number in \[0, 1\], got 1.5"),
        ({"epsilon": -0.1}, r"epsilon: expected a number in \[0, 1\]"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"mask": "allfalse"}, r"row\(s\) \[0\] allow no action"),
        ({"mask": "shape"}, r"action_mask: expected shape \[2, 6\], got \[2, 5\]"),
        ({"mask": "dtype"}, "action_mask: expected dtype bool"),
    ],
)
def test_bad_input_messages(model: HamletModel, kwargs: dict, message: str) -> None:
    obs: object = _obs(model, 2)
    variants = {
        "wide": torch.rand(2, model.obs_dim + 1),
        "rank3": torch.rand(1, 2, model.obs_dim),
        "ints": torch.ones(2, model.obs_dim, dtype=torch.int64),
        "nan": torch.cat([_obs(model, 1), torch.full((1, model.obs_dim), float("nan"))]),
        "empty": torch.rand(0, model.obs_dim),
        "tuple": (np.zeros(model.obs_dim, np.float32), {}),
    }
    obs = variants.get(kwargs.get("obs"), obs)
    masks = {
        "allfalse": torch.tensor([[False] * 6, [True] * 6]),
        "shape": torch.ones(2, 5, dtype=torch.bool),
        "dtype": torch.ones(2, 6),
    }
    with pytest.raises(InvalidInputError, match=message):
        model.predict(obs, epsilon=kwargs.get("epsilon", 0.0), action_mask=masks.get(kwargs.get("mask")))


def test_hidden_errors() -> None:
    lstm = HamletModel(make_network("recurrent"))
    mlp = HamletModel(make_network("simple"))
    obs = torch.rand(3, 54)
    with pytest.raises(InvalidInputError, match=r"hidden h: expected shape \[1, 3, 256\], got \[1, 2, 256\]"):
        lstm.predict(obs, lstm.initial_hidden(2))
    with pytest.raises(InvalidInputError, match=r"expected a pair \(h, c\)"):
        lstm.predict(obs, torch.zeros(1, 3, 256))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="takes no hidden state"):
        mlp.predict(torch.rand(3, 91), lstm.initial_hidden(3))
    assert isinstance(InvalidInputError("x"), ValueError)


def test_properties_and_to() -> None:
    model = HamletModel(make_network("recurrent"))
    assert (model.obs_dim, model.action_dim, model.is_recurrent, model.hidden_dim) == (54, 6, True, 256)
    assert model.num_parameters == 636_486 and model.device.type == "cpu"
    assert model.to("cpu") is model and model.to("auto").device.type in ("cpu", "cuda")
    mlp = HamletModel(make_network("simple"))
    assert (mlp.obs_dim, mlp.hidden_dim, mlp.is_recurrent, mlp.num_parameters) == (91, None, False, 29_574)
    meta = mlp.metadata
    meta["episode"] = 99  # a copy: the model's metadata does not change
    assert mlp.metadata["episode"] is None


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 16), seed=st.integers(0, 2**16), epsilon=st.floats(0.0, 1.0))
def test_property_pure_and_reproducible(batch: int, seed: int, epsilon: float) -> None:
    model = _PROPERTY_MODEL
    obs = torch.rand(batch, 91, generator=torch.Generator().manual_seed(seed))
    a = model.predict(obs, epsilon=epsilon, generator=torch.Generator().manual_seed(seed))
    b = model.predict(obs.clone(), epsilon=epsilon, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.q_values, b.q_values)
    if epsilon == 0.0:
        assert torch.equal(a.actions, a.q_values.argmax(dim=1))


_PROPERTY_MODEL = HamletModel(make_network("simple", seed=11))


def test_finiteness_check_is_exact() -> None:
    model = HamletModel(make_network("recurrent"))
    huge = torch.full((2, 54), 3e38)  # finite, but its sum overflows to inf: must still be accepted
    assert model.predict(huge).q_values.shape == (2, 6)
    h, c = model.initial_hidden(2)
    c[0, 1, 7] = float("inf")
    with pytest.raises(InvalidInputError, match=r"hidden c: expected finite values, got NaN or Inf in row\(s\) \[1\]"):
        model.predict(torch.rand(2, 54), (h, c))
