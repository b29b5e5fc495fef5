"""VectorTownletEnv as a whole: masks, determinism, partial resets, episode ends, input checks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from townlet.env import (
    AFFORDANCE_NAMES,
    L1,
    Action,
    InvalidActionError,
    LevelConfigError,
    StateError,
    VectorTownletEnv,
    random_valid_actions,
    run_random_policy,
)
from townlet.env.meters import ENERGY

LAYOUT = {name: (i % 8, i // 8) for i, name in enumerate(AFFORDANCE_NAMES)}  # rows 0-1 hold all 14


def _set(env: VectorTownletEnv, **fields: object) -> None:
    env.set_state(dataclasses.replace(env.get_state(), **fields))


def test_action_masks() -> None:
    env = VectorTownletEnv("L1", num_envs=4, seed=0, layout=LAYOUT)
    env.reset()
    meters = env.get_state().meters.copy()
    meters[3, ENERGY] = 0.0
    _set(env, positions=np.array([[0, 0], [7, 7], [3, 4], [1, 0]]), meters=meters, dead=np.array([0, 0, 0, 1], bool))
    masks = env.action_masks()
    #                 UP     DOWN   LEFT   RIGHT  INTER  WAIT
    expected = [
        [False, True, False, True, True, True],  # top-left corner, on Bed
        [True, False, True, False, False, True],  # bottom-right corner, empty
        [True, True, True, True, False, True],  # middle, empty
        [False] * 6,  # dead
    ]
    np.testing.assert_array_equal(masks, expected)
    assert masks.shape == (4, env.action_dim) and masks.dtype == bool


def test_temporal_masks_follow_opening_hours() -> None:
    env = VectorTownletEnv("L3", num_envs=3, seed=0, layout=LAYOUT)
    env.reset()
    bar = LAYOUT["Bar"]
    _set(env, positions=np.array([bar, bar, LAYOUT["Doctor"]]), time_of_day=np.array([2, 5, 18]))
    # Bar is open 18-28 (wraps to 04:00); Doctor 8-18 (closed at 18).
    np.testing.assert_array_equal(env.action_masks()[:, Action.INTERACT], [True, False, False])


def _rollout(env: VectorTownletEnv, steps: int, policy_seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(policy_seed)
    trace = [env.reset()]
    for _ in range(steps):
        obs, reward, done, info = env.step(random_valid_actions(env.action_masks(), rng))
        trace += [obs, reward, done, info["truncated"]]
        env.reset_envs(done | info["truncated"])
    return trace


@pytest.mark.parametrize("level", ["L1", "L3"])
def test_same_seed_same_trajectory(level: str) -> None:
    a = _rollout(VectorTownletEnv(level, 8, seed=3, relayout_each_reset=True), 150, policy_seed=1)
    b = _rollout(VectorTownletEnv(level, 8, seed=3, relayout_each_reset=True), 150, policy_seed=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = _rollout(VectorTownletEnv(level, 8, seed=4, relayout_each_reset=True), 150, policy_seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_reset_with_seed_matches_new_env() -> None:
    env = VectorTownletEnv("L2", 4, seed=0)
    env.reset()
    fresh = VectorTownletEnv("L2", 4, seed=9)
    np.testing.assert_array_equal(env.reset(seed=9), fresh.reset())
    assert env.affordance_positions() == fresh.affordance_positions()


def test_shared_layout_by_default() -> None:
    env = VectorTownletEnv("L1", 5, seed=2)
    env.reset()
    layouts = env.get_state().layouts
    assert (layouts == layouts[0]).all()
    before = env.affordance_positions()
    env.reset()
    assert env.affordance_positions() == before  # fixed across resets, as in Hamlet training


@pytest.mark.parametrize("relayout", [False, True])
def test_reset_envs_resets_only_the_chosen_envs(relayout: bool) -> None:
    env = VectorTownletEnv("L1", 4, seed=5, relayout_each_reset=relayout)
    env.reset()
    for _ in range(10):
        env.step(np.full(4, Action.WAIT))
    before = env.get_state()
    obs = env.reset_envs(np.array([True, False, True, False]))
    after = env.get_state()
    assert obs.shape == (4, 91)
    np.testing.assert_array_equal(after.step_counts, [0, 10, 0, 10])
    np.testing.assert_array_equal(after.meters[[0, 2]], [[1, 1, 1, 0.5, 1, 1, 1, 1]] * 2)
    np.testing.assert_array_equal(after.meters[[1, 3]], before.meters[[1, 3]])
    np.testing.assert_array_equal(after.positions[[1, 3]], before.positions[[1, 3]])
    np.testing.assert_array_equal(after.layouts[[1, 3]], before.layouts[[1, 3]])
    assert relayout == (not np.array_equal(after.layouts[[0, 2]], before.layouts[[0, 2]]))
    np.testing.assert_array_equal(obs, env.observe())


@pytest.mark.parametrize("level", ["L1", "L2"])
def test_reset_envs_obs_match_a_full_encode(level: str) -> None:
    env = VectorTownletEnv(level, 16, seed=1, relayout_each_reset=True)
    env.reset()
    rng = np.random.default_rng(0)
    for i in range(40):
        obs, _, _, _ = env.step(random_valid_actions(env.action_masks(), rng))
        obs[:] = -1.0  # the caller owns what step returns
        mask = rng.random(16) < (0.0 if i % 5 == 0 else 0.3)
        np.testing.assert_array_equal(env.reset_envs(mask), env.observe())


def test_dead_env_is_frozen_until_reset() -> None:
    env = VectorTownletEnv("L1", 2, seed=0, layout=LAYOUT)
    env.reset()
    meters = env.get_state().meters.copy()
    meters[0, ENERGY] = 0.003
    _set(env, meters=meters, positions=np.array([[5, 5], [5, 5]]))
    _, reward, done, info = env.step(np.array([Action.WAIT, Action.WAIT]))
    np.testing.assert_array_equal(done, [True, False])
    assert reward[0] == 0.0 and reward[1] > 0.9
    assert info["died"][0] and not info["truncated"][0]
    assert not env.action_masks()[0].any()
    frozen = env.get_state()
    _, reward, done, info = env.step(np.array([Action.UP, Action.UP]))
    assert reward[0] == 0.0 and done[0] and not info["active"][0]
    np.testing.assert_array_equal(env.get_state().meters[0], frozen.meters[0])
    np.testing.assert_array_equal(env.get_state().positions[0], [5, 5])
    assert env.get_state().step_counts[0] == 1
    env.reset_envs(np.array([True, False]))
    assert env.action_masks()[0, Action.WAIT]


def test_truncation_is_not_done() -> None:
    level = dataclasses.replace(L1, max_steps_per_episode=3)
    env = VectorTownletEnv(level, 2, seed=0)
    env.reset()
    for step in range(1, 4):
        _, _, done, info = env.step(np.full(2, Action.WAIT))
        assert not done.any()
        assert info["truncated"].all() == (step == 3)
    assert not env.action_masks().any()


def test_retirement_ends_with_bonus() -> None:
    level = dataclasses.replace(L1, agent_lifespan=2)
    env = VectorTownletEnv(level, 1, seed=0, depletion_multiplier=0.0)
    env.reset()
    env.step([Action.WAIT])
    _, reward, done, info = env.step([Action.WAIT])
    assert done[0] and info["retired"][0] and not info["died"][0] and not info["truncated"][0]
    health, energy = env.get_state().meters[0, [6, 0]]
    assert reward[0] == pytest.approx(health * energy + 1.0, rel=1e-6)


def test_input_errors_explain_the_fix() -> None:
    env = VectorTownletEnv("L1", 3, seed=0)
    with pytest.raises(StateError, match="reset"):
        env.step([0, 0, 0])
    env.reset()
    with pytest.raises(InvalidActionError, match=r"shape \(3,\)"):
        env.step([0, 0])
    with pytest.raises(InvalidActionError, match="astype"):
        env.step(np.zeros(3))
    with pytest.raises(InvalidActionError, match=r"0\.\.5"):
        env.step([0, 6, 0])
    with pytest.raises(StateError, match="bool mask"):
        env.reset_envs([0, 1, 0])
    with pytest.raises(LevelConfigError, match="unknown level"):
        VectorTownletEnv("L9", 1)
    with pytest.raises(LevelConfigError, match="depletion_multiplier"):
        VectorTownletEnv("L1", 1, depletion_multiplier=-1.0)
    with pytest.raises(LevelConfigError, match="share cell"):
        VectorTownletEnv("L1", 1, layout={**LAYOUT, "Park": (0, 0)})
    with pytest.raises(LevelConfigError, match="do not match"):
        VectorTownletEnv("L0_0", 1, layout=LAYOUT)


def test_random_actions_keep_the_world_in_range() -> None:
    env = VectorTownletEnv("L3", 32, seed=11, relayout_each_reset=True)
    rng = np.random.default_rng(0)
    env.reset()
    for _ in range(300):
        obs, reward, done, info = env.step(rng.integers(0, 6, size=32))  # masked actions included
        state = env.get_state()
        assert ((state.meters >= 0) & (state.meters <= 1)).all()
        assert ((state.positions >= 0) & (state.positions < 8)).all()
        assert np.isfinite(obs).all() and ((reward >= 0) & (reward <= 2)).all()
        assert ((obs[:, :25] == 0) | (obs[:, :25] == 1)).all()
        assert (obs[:, 35:50].sum(axis=1) == 1).all()
        assert ((state.interaction_progress >= 0) & (state.interaction_progress < 6)).all()
        env.reset_envs(done | info["truncated"])


def test_set_state_rejects_positions_off_grid() -> None:
    env = VectorTownletEnv("L1", 1, seed=0)
    env.reset()
    with pytest.raises(StateError, match="positions"):
        _set(env, positions=np.array([[8, 0]]))


def test_level_names_and_pack_names() -> None:
    assert VectorTownletEnv("L1_full_observability", 1).level is L1
    assert VectorTownletEnv(L1, 1).action_dim == 6


def test_random_valid_actions_only_picks_allowed_actions() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((500, 6)) < 0.4
    masks[0] = False
    actions = random_valid_actions(masks, rng)
    assert actions[0] == Action.WAIT
    assert masks[np.arange(1, 500), actions[1:]][masks[1:].any(axis=1)].all()
    # every allowed action of a fully open row turns up
    assert set(random_valid_actions(np.ones((600, 6), bool), rng)) == set(range(6))


def test_run_random_policy_is_seeded_and_bounded() -> None:
    a = run_random_policy("L2", episodes=12, seed=3, max_parallel=5)
    b = run_random_policy("L2", episodes=12, seed=3, max_parallel=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (12,) and a.dtype == np.int64
    assert ((a >= 1) & (a <= 500)).all()


@pytest.mark.slow  # starts a Python process
def test_env_package_does_not_import_torch() -> None:
    code = "import sys, townlet.env; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
