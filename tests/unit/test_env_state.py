"""Setting a state: ``EnvState.build`` from positions, a layout and meters; ``set_state`` rejects the unreachable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from townlet.env import (
    AFFORDANCE_NAMES,
    NO_AFFORDANCE,
    Action,
    EnvState,
    InvalidStateError,
    StateError,
    VectorTownletEnv,
)
from townlet.env.meters import ENERGY, MONEY

LAYOUT = {name: (i % 8, i // 8) for i, name in enumerate(AFFORDANCE_NAMES)}  # Bed (0, 0) ... Park (5, 1)


def _env(level: str = "L1", n: int = 2) -> VectorTownletEnv:
    env = VectorTownletEnv(level, n, seed=0, layout=LAYOUT if level != "L0_0" else None)
    env.reset()
    return env


def _rejected(env: VectorTownletEnv, **fields: object) -> InvalidStateError:
    with pytest.raises(InvalidStateError) as caught:
        env.set_state(dataclasses.replace(env.get_state(), **fields))
    return caught.value


# --- building a state -------------------------------------------------------------------------------------


def test_build_defaults_every_other_field_to_an_episode_start() -> None:
    state = EnvState.build("L1", [(3, 4), (0, 0)], LAYOUT, meters={"energy": 0.1})
    np.testing.assert_array_equal(state.positions, [[3, 4], [0, 0]])
    assert state.meters.dtype == np.float32 and state.meters.shape == (2, 8)
    np.testing.assert_array_equal(state.meters[:, ENERGY], np.float32(0.1))
    np.testing.assert_array_equal(state.meters[:, MONEY], np.float32(0.5))  # L1's starting money
    assert state.layouts.shape == (2, 8, 8) and state.layouts[0, 0, 0] == AFFORDANCE_NAMES.index("Bed")
    np.testing.assert_array_equal(state.step_counts, [0, 0])
    np.testing.assert_array_equal(state.interaction_target, [NO_AFFORDANCE] * 2)
    assert not state.finished.any()


def test_built_state_steps_as_the_situation_says() -> None:
    env = _env(n=1)
    env.set_state(EnvState.build("L1", (0, 0), env.affordance_positions(), meters={"money": 0.05}, time_of_day=7))
    _, _, _, info = env.step([Action.INTERACT])  # standing on the Bed with exactly $5
    assert info["successful_interactions"][0] == AFFORDANCE_NAMES.index("Bed")
    assert env.get_state().meters[0, MONEY] == 0.0
    assert info["time_of_day"][0] == 8


def test_build_takes_a_full_meter_row_and_scalar_fields() -> None:
    meters = [0.5, 0.4, 0.3, 0.2, 0.1, 0.9, 0.8, 0.7]
    state = EnvState.build("L2", [(1, 1)] * 3, LAYOUT, meters=meters, step_counts=499)
    np.testing.assert_array_equal(state.meters, np.array([meters] * 3, dtype=np.float32))
    np.testing.assert_array_equal(state.step_counts, [499] * 3)


def test_build_rejects_unknown_names() -> None:
    with pytest.raises(InvalidStateError, match="meters"):
        EnvState.build("L1", (0, 0), LAYOUT, meters={"hunger": 0.5})
    with pytest.raises(InvalidStateError, match="hour_of_day"):
        EnvState.build("L1", (0, 0), LAYOUT, hour_of_day=3)


def test_build_rejects_a_layout_missing_an_affordance() -> None:
    with pytest.raises(InvalidStateError, match="Bed") as caught:
        EnvState.build("L1", (0, 0), {k: v for k, v in LAYOUT.items() if k != "Bed"})
    assert caught.value.field == "layouts" and isinstance(caught.value, StateError)


# --- set_state validation ---------------------------------------------------------------------------------


def test_nan_meter_is_rejected_with_field_expected_and_got() -> None:
    env = _env()
    meters = env.get_state().meters.copy()
    meters[1, ENERGY] = np.nan
    error = _rejected(env, meters=meters)
    assert error.field == "meters"
    assert "[0, 1]" in error.expected
    assert "nan" in error.got and "energy" in error.got and "env 1" in error.got
    assert str(error).startswith("state.meters: expected")


def test_meter_above_one_is_rejected() -> None:
    env = _env()
    meters = env.get_state().meters.copy()
    meters[0, MONEY] = 1.5
    assert _rejected(env, meters=meters).field == "meters"


@pytest.mark.parametrize("hour", [24, 99, -1])
def test_hour_out_of_range_is_rejected(hour: int) -> None:
    error = _rejected(_env(), time_of_day=np.array([0, hour]))
    assert error.field == "time_of_day" and "0..23" in error.expected and str(hour) in error.got


@pytest.mark.parametrize("index", [15, -1, 99])
def test_unknown_affordance_index_is_rejected(index: int) -> None:
    error = _rejected(_env(), interaction_target=np.array([index, NO_AFFORDANCE]))
    assert error.field == "interaction_target" and str(index) in error.got


def test_layout_with_an_unknown_affordance_index_is_rejected() -> None:
    env = _env()
    layouts = env.get_state().layouts.copy()
    layouts[0, 7, 7] = 42
    assert _rejected(env, layouts=layouts).field == "layouts"


def test_layout_of_another_level_is_rejected() -> None:
    # L0_5 deploys 4 affordances on a 7x7 grid; an 8x8 layout holding only those is not an L1 layout.
    env = _env("L1")
    layouts = np.full((2, 8, 8), NO_AFFORDANCE)
    for i, name in enumerate(["Bed", "HomeMeal", "Hospital", "Job"]):
        layouts[:, 0, i] = AFFORDANCE_NAMES.index(name)
    error = _rejected(env, layouts=layouts)
    assert error.field == "layouts"
    assert "L1" in error.expected and "Bed" in error.got and "Park" not in error.got


def test_layout_with_a_duplicated_affordance_is_rejected() -> None:
    env = _env("L0_0", n=1)
    layouts = env.get_state().layouts.copy()
    layouts[0] = AFFORDANCE_NAMES.index("Bed")  # a Bed on all nine cells
    error = _rejected(env, layouts=layouts)
    assert "Bed x9" in error.got


def test_layout_of_the_wrong_grid_size_is_rejected() -> None:
    error = _rejected(_env("L1"), layouts=np.full((2, 7, 7), NO_AFFORDANCE))
    assert error.field == "layouts" and "(2, 8, 8)" in error.expected and "(2, 7, 7)" in error.got


def test_fractional_positions_are_rejected() -> None:
    error = _rejected(_env(), positions=np.array([[1.5, 2.0], [0.0, 0.0]]))
    assert error.field == "positions" and "integers" in error.expected


def test_rejected_state_leaves_the_env_untouched() -> None:
    env = _env()
    before = env.get_state()
    _rejected(env, time_of_day=np.array([99, 0]))
    after = env.get_state()
    for field in dataclasses.fields(EnvState):
        np.testing.assert_array_equal(getattr(after, field.name), getattr(before, field.name))


def test_a_valid_state_still_steps_without_nan() -> None:
    env = _env()
    env.set_state(dataclasses.replace(env.get_state(), time_of_day=np.array([23, 0])))
    _, reward, _, _ = env.step([Action.WAIT, Action.WAIT])
    assert np.isfinite(reward).all()
