"""Meter dynamics on hand-worked steps: costs, depletion, fitness modulation, cascades, interactions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from townlet.env import (
    AFFORDANCE_NAMES,
    NO_AFFORDANCE,
    Action,
    VectorTownletEnv,
    apply_cascades,
    apply_fitness_modulation,
    apply_instant_interactions,
    compute_reward,
    terminal_mask,
)
from townlet.env.meters import CASCADES, ENERGY, FITNESS, HEALTH, HYGIENE, MONEY, MOOD, SATIATION, SOCIAL

BED = AFFORDANCE_NAMES.index("Bed")
JOB = AFFORDANCE_NAMES.index("Job")
L1_LAYOUT = {name: (i % 8, i // 8) for i, name in enumerate(AFFORDANCE_NAMES)}  # Bed (0,0) ... Park (5,1)


def _env(level: str, meters: list[float], position: tuple[int, int], multiplier: float = 1.0, **state: object):
    layout = {"Bed": (1, 1)} if level == "L0_0" else L1_LAYOUT
    env = VectorTownletEnv(level, num_envs=1, seed=0, layout=layout, depletion_multiplier=multiplier)
    env.reset()
    fields = {"meters": np.array([meters], dtype=np.float32), "positions": np.array([position]), **state}
    env.set_state(dataclasses.replace(env.get_state(), **fields))
    return env


FULL = [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0]


def test_one_wait_step_from_full_meters() -> None:
    env = _env("L1", FULL, position=(7, 7))
    _, reward, done, info = env.step([Action.WAIT])
    # WAIT costs 0.001 energy; base depletion x1.0; health loses 0.001 * (0.5 + 2.5 * (1 - 0.998)).
    expected = [1 - 0.001 - 0.005, 0.997, 0.996, 0.5, 0.999, 0.994, 1 - 0.000505, 0.998]
    np.testing.assert_allclose(env.get_state().meters[0], expected, atol=1e-6)
    assert env.get_state().meters.dtype == np.float32
    assert reward.dtype == np.float32
    np.testing.assert_allclose(reward, [0.999495 * 0.994], rtol=1e-6)
    assert not done[0] and not info["truncated"][0] and info["step_counts"][0] == 1


def test_one_move_step_costs_hygiene_and_satiation() -> None:
    env = _env("L1", FULL, position=(7, 7))
    env.step([Action.UP])
    meters = env.get_state().meters[0]
    np.testing.assert_allclose(
        meters[[ENERGY, HYGIENE, SATIATION]], [1 - 0.005 - 0.005, 1 - 0.003 - 0.003, 1 - 0.004 - 0.004]
    )
    np.testing.assert_array_equal(env.get_state().positions[0], [7, 6])


def test_curriculum_multiplier_scales_base_depletion_only() -> None:
    env = _env("L1", FULL, position=(7, 7), multiplier=0.2)
    env.step([Action.WAIT])
    meters = env.get_state().meters[0]
    assert meters[ENERGY] == pytest.approx(1 - 0.001 - 0.2 * 0.005)
    assert meters[SOCIAL] == pytest.approx(1 - 0.2 * 0.006)
    # fitness 1 - 0.0004 -> health loss 0.001 * (0.5 + 2.5 * 0.0004), not scaled
    assert meters[HEALTH] == pytest.approx(1 - 0.001 * (0.5 + 2.5 * 0.0004))


def test_fitness_modulation_range() -> None:
    meters = np.array([FULL, FULL], dtype=np.float32)
    meters[1, FITNESS] = 0.0
    out = apply_fitness_modulation(meters)
    np.testing.assert_allclose(out[:, HEALTH], [1 - 0.0005, 1 - 0.003])
    assert meters[1, HEALTH] == 1.0  # input untouched


def test_cascade_fires_below_threshold_with_exact_penalty() -> None:
    meters = np.array([FULL, FULL], dtype=np.float32)
    meters[0, SATIATION] = 0.15  # half-way below 0.3
    meters[1, SATIATION] = 0.30  # at the threshold: nothing
    out = apply_cascades(meters)
    assert out[0, HEALTH] == pytest.approx(1 - 0.004 * 0.5)
    assert out[0, ENERGY] == pytest.approx(1 - 0.005 * 0.5)
    np.testing.assert_array_equal(out[1], meters[1])


def test_cascades_run_in_category_order() -> None:
    meters = np.array([FULL], dtype=np.float32)
    meters[0, SATIATION] = 0.15
    meters[0, HYGIENE] = 0.0
    out = apply_cascades(meters)[0]
    # primary_to_pivotal reads satiation 0.15 before hygiene -> satiation lowers it to 0.148.
    assert out[SATIATION] == pytest.approx(0.15 - 0.002)
    assert out[HEALTH] == pytest.approx(1 - 0.002 - 0.0005)
    assert out[ENERGY] == pytest.approx(1 - 0.0025 - 0.0005)
    assert out[FITNESS] == pytest.approx(1 - 0.002)
    assert out[MOOD] == pytest.approx(1 - 0.003)


def _hamlet_cascades(meters: np.ndarray) -> np.ndarray:
    """Hamlet's CascadeEngine, one cascade at a time in float32 (threshold and strength as float32 scalars)."""
    out = meters.copy()
    for c in CASCADES:
        threshold, strength = np.float32(c.threshold), np.float32(c.strength)
        low = out[:, c.source] < threshold
        penalty = strength * ((threshold - out[low, c.source]) / threshold)
        out[low, c.target] = np.clip(out[low, c.target] - penalty, np.float32(0.0), np.float32(1.0))
    return out


def test_batched_cascades_round_exactly_as_hamlet_one_at_a_time() -> None:
    rng = np.random.default_rng(0)
    meters = (rng.random((2000, 8)) * rng.choice([0.01, 0.4, 1.0], size=(2000, 8))).astype(np.float32)
    meters[:5] = [[0.0] * 8, [0.3] * 8, [np.float32(0.3) - np.float32(1e-8)] * 8, [1.0] * 8, [0.29] * 8]
    before = meters.copy()
    out = apply_cascades(meters)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _hamlet_cascades(meters))  # bit for bit, not approximately
    np.testing.assert_array_equal(meters, before)  # the input is left alone
    for row in (0, 4, 17):  # one env at a time rounds the same as in a batch
        np.testing.assert_array_equal(apply_cascades(meters[row : row + 1])[0], out[row])


def test_bed_instant_needs_money() -> None:
    meters = np.array([[0.3, 1, 1, 0.10, 1, 1, 1, 1], [0.3, 1, 1, 0.04, 1, 1, 1, 1]], dtype=np.float32)
    out, success = apply_instant_interactions(meters, np.array([BED, BED]), np.array([True, True]))
    np.testing.assert_array_equal(success, [True, False])
    np.testing.assert_allclose(out[0], [0.8, 1, 1, 0.05, 1, 1, 1, 1])  # health 1.02 clamped to 1
    np.testing.assert_array_equal(out[1], meters[1])


def test_bed_step_in_l0_0() -> None:
    env = _env("L0_0", [0.3, 1, 1, 0.10, 1, 1, 1, 1], position=(1, 1))
    _, reward, _, info = env.step([Action.INTERACT])
    assert info["successful_interactions"][0] == BED
    meters = env.get_state().meters[0]
    np.testing.assert_allclose(meters, [0.8 - 0.005, 0.997, 0.996, 0.05, 0.999, 0.994, 1 - 0.000505, 0.998], atol=1e-6)
    assert reward[0] == pytest.approx(0.999495 * 0.795, rel=1e-6)


def test_free_job_pays_and_costs_energy() -> None:
    meters = np.array([FULL], dtype=np.float32)
    out, success = apply_instant_interactions(meters, np.array([JOB]), np.array([True]))
    assert success[0]
    np.testing.assert_allclose(out[0, [ENERGY, MONEY, SOCIAL, HEALTH]], [0.85, 0.725, 1.0, 0.97])


def test_interact_without_affordance_wastes_step() -> None:
    meters = np.array([FULL], dtype=np.float32)
    out, success = apply_instant_interactions(meters, np.array([NO_AFFORDANCE]), np.array([True]))
    assert not success[0]
    np.testing.assert_array_equal(out, meters)


def test_terminal_and_reward() -> None:
    meters = np.array([FULL, FULL, FULL], dtype=np.float32)
    meters[0, ENERGY] = 0.0
    meters[1, HEALTH] = 0.0
    meters[2, ENERGY] = 0.5
    dead = terminal_mask(meters)
    np.testing.assert_array_equal(dead, [True, True, False])
    reward = compute_reward(meters, dead, retired=np.array([False, False, True]))
    np.testing.assert_allclose(reward, [0.0, 0.0, 1.5])


def _interact_n(env: VectorTownletEnv, n: int) -> list[int]:
    progress = []
    for _ in range(n):
        _, _, _, info = env.step([Action.INTERACT])
        progress.append(int(info["interaction_progress"][0]))
    return progress


def test_multi_tick_bed_in_l3() -> None:
    env = _env("L3", [0.2, 1, 1, 0.5, 1, 1, 1, 1], position=(0, 0), multiplier=0.0)
    assert _interact_n(env, 5) == [1, 2, 3, 4, 0]
    meters = env.get_state().meters[0]
    assert meters[ENERGY] == pytest.approx(0.2 + 5 * 0.075 + 0.125)
    assert meters[MONEY] == pytest.approx(0.5 - 5 * 0.01)


def test_multi_tick_progress_lost_when_moving_away() -> None:
    env = _env("L3", [0.2, 1, 1, 0.5, 1, 1, 1, 1], position=(0, 0), multiplier=0.0)
    assert _interact_n(env, 2) == [1, 2]
    _, _, _, info = env.step([Action.DOWN])
    assert info["interaction_progress"][0] == 0
    env.step([Action.UP])
    assert _interact_n(env, 1) == [1]
    assert env.get_state().meters[0, MONEY] == pytest.approx(0.5 - 3 * 0.01)  # paid ticks are lost


def test_multi_tick_respects_opening_hours() -> None:
    job = L1_LAYOUT["Job"]
    env = _env("L3", FULL, position=job, multiplier=0.0, time_of_day=np.array([3]))
    assert not env.action_masks()[0, Action.INTERACT]
    _, _, _, info = env.step([Action.INTERACT])
    assert info["successful_interactions"][0] == -1
    assert env.get_state().meters[0, MONEY] == 0.5

    env = _env("L3", FULL, position=job, multiplier=0.0, time_of_day=np.array([8]))
    assert env.action_masks()[0, Action.INTERACT]
    _, _, _, info = env.step([Action.INTERACT])
    assert info["successful_interactions"][0] == JOB
    assert env.get_state().meters[0, MONEY] == pytest.approx(0.5 + 0.05625)
    assert info["time_of_day"][0] == 9
