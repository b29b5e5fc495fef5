"""HamletModel.predict: pure, exact, epsilon-greedy with masks, numpy in -> numpy out, episode_start resets,
and clear errors for bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hamlet_runs import make_network
from hypothesis import given, settings
from hypothesis import strategies as st

from townlet.inference import HamletModel, InvalidInputError, reset_hidden


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
    expected = model.predict(obs).q_values.numpy()
    np.testing.assert_array_equal(model.predict(obs.numpy()).q_values, expected)
    np.testing.assert_array_equal(model.predict(obs.numpy().astype(np.float64)).q_values, expected)
    np.testing.assert_array_equal(model.predict(obs.tolist()).q_values, expected)


def test_numpy_in_numpy_out(model: HamletModel) -> None:
    obs = _obs(model, 4).numpy()
    result = model.predict(obs, epsilon=0.3, generator=torch.Generator().manual_seed(3))
    assert isinstance(result.actions, np.ndarray) and result.actions.dtype == np.int64
    assert isinstance(result.q_values, np.ndarray) and result.q_values.dtype == np.float32
    assert result.actions.shape == (4,) and result.q_values.shape == (4, 6)
    if model.is_recurrent:
        assert result.hidden is not None
        assert all(isinstance(t, np.ndarray) and t.shape == (1, 4, 256) for t in result.hidden)
    else:
        assert result.hidden is None
    assert isinstance(model.predict(obs.tolist()).q_values, np.ndarray)  # a list counts as numpy
    as_torch = model.predict(torch.from_numpy(obs), epsilon=0.3, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(result.actions, as_torch.actions.numpy())


def test_torch_in_torch_out(model: HamletModel) -> None:
    result = model.predict(_obs(model, 2))
    assert isinstance(result.actions, torch.Tensor) and isinstance(result.q_values, torch.Tensor)
    assert result.hidden is None or all(isinstance(t, torch.Tensor) for t in result.hidden)


def test_numpy_rollout_feeds_numpy_hidden_back() -> None:
    model = HamletModel(make_network("recurrent", seed=6))
    obs = _obs(model, 5, seed=1)
    np_hidden = torch_hidden = None
    for t in range(5):
        ours = model.predict(obs[t : t + 1].numpy(), np_hidden)
        theirs = model.predict(obs[t : t + 1], torch_hidden)
        np.testing.assert_array_equal(ours.q_values, theirs.q_values.numpy())
        np_hidden, torch_hidden = ours.hidden, theirs.hidden
    assert isinstance(np_hidden[0], np.ndarray)  # type: ignore[index]


def test_episode_start_resets_only_its_rows() -> None:
    model = HamletModel(make_network("recurrent", seed=7))
    first = _obs(model, 3, seed=1)
    hidden = model.predict(first).hidden
    assert hidden is not None
    hidden_before = tuple(t.clone() for t in hidden)
    obs = _obs(model, 3, seed=2)
    starts = np.array([False, True, False])
    result = model.predict(obs, hidden, episode_start=starts)
    carried = model.predict(obs, hidden)
    fresh = model.predict(obs)  # hidden=None: every row starts an episode
    assert torch.equal(result.q_values[1], fresh.q_values[1])
    assert torch.equal(result.q_values[[0, 2]], carried.q_values[[0, 2]])
    assert not torch.equal(result.q_values[1], carried.q_values[1])
    assert all(torch.equal(a, b) for a, b in zip(hidden, hidden_before, strict=True))  # the input is untouched
    as_tensor = model.predict(obs, hidden, episode_start=torch.from_numpy(starts))
    assert torch.equal(as_tensor.q_values, result.q_values)


def test_episode_start_is_ignored_by_the_mlp() -> None:
    model = HamletModel(make_network("simple", seed=7))
    obs = _obs(model, 2)
    assert torch.equal(model.predict(obs, episode_start=[True, False]).q_values, model.predict(obs).q_values)


@pytest.mark.parametrize(
    ("starts", "message"),
    [
        (np.array([1, 0, 1]), r"episode_start: expected dtype bool .* got torch.int64"),
        (np.array([True, False]), r"episode_start: expected shape \[3\] \(one flag per row\), got \[2\]"),
        (np.ones((3, 1), bool), r"expected shape \[3\] .* got \[3, 1\]"),
    ],
)
def test_episode_start_errors(starts: np.ndarray, message: str) -> None:
    model = HamletModel(make_network("recurrent"))
    with pytest.raises(InvalidInputError, match=message):
        model.predict(torch.rand(3, 54), episode_start=starts)


def test_reset_hidden_is_pure() -> None:
    h, c = torch.rand(1, 4, 8), torch.rand(1, 4, 8)
    copies = h.clone(), c.clone()
    new_h, new_c = reset_hidden((h, c), torch.tensor([True, False, False, True]))
    assert torch.equal(h, copies[0]) and torch.equal(c, copies[1])
    assert not new_h[:, [0, 3]].any() and not new_c[:, [0, 3]].any()
    assert torch.equal(new_h[:, [1, 2]], h[:, [1, 2]]) and torch.equal(new_c[:, [1, 2]], c[:, [1, 2]])


@settings(max_examples=15, deadline=None)
@given(starts=st.lists(st.booleans(), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_property_episode_start_equals_zeroing_by_hand(starts: list[bool], seed: int) -> None:
    model = _PROPERTY_LSTM
    batch = len(starts)
    hidden = model.predict(torch.rand(batch, 54, generator=torch.Generator().manual_seed(seed))).hidden
    assert hidden is not None
    by_hand = tuple(t.clone() for t in hidden)
    for row, start in enumerate(starts):
        if start:
            by_hand[0][:, row] = 0
            by_hand[1][:, row] = 0
    obs = torch.rand(batch, 54, generator=torch.Generator().manual_seed(seed + 1))
    ours = model.predict(obs, hidden, episode_start=np.array(starts))
    theirs = model.predict(obs, (by_hand[0], by_hand[1]))
    assert torch.equal(ours.q_values, theirs.q_values)
    assert all(torch.equal(a, b) for a, b in zip(ours.hidden, theirs.hidden, strict=True))  # type: ignore[arg-type]


_PROPERTY_LSTM = HamletModel(make_network("recurrent", seed=12))


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
    with pytest.raises(
        InvalidInputError, match=r"hidden h: expected shape \[1, 3, 256\] \(layers, batch, hidden\), got \[1, 2, 256\]"
    ):
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


def test_device_follows_the_network_however_it_is_moved() -> None:
    """`device` is read from a parameter, not walked per call: it must still follow a move made on the network."""
    model = HamletModel(make_network("simple"))
    assert model.device == torch.device("cpu")
    model.network.to("meta")  # not through HamletModel.to; replaces the parameter objects
    assert model.device == torch.device("meta")
    model.network.to_empty(device="cpu")
    assert model.device == torch.device("cpu")


def test_float64_and_float32_observations_give_the_same_answer(model: HamletModel) -> None:
    obs = _obs(model, 3)
    got32, got64 = model.predict(obs), model.predict(obs.double())
    assert got32.q_values.dtype == got64.q_values.dtype == torch.float32
    torch.testing.assert_close(got32.q_values, got64.q_values)
