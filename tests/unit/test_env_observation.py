"""Observation encoding, checked against hand-worked indices and a naive per-agent reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from townlet.env import AFFORDANCE_NAMES, LEVELS, NO_AFFORDANCE, VectorTownletEnv, draw_layouts
from townlet.env.observation import encode_extras, encode_partial_observation

# Job under the top-left corner, Bed right of it, Shower two rows below; the rest far away (rows 6-7).
_NEAR = {"Job": (0, 0), "Bed": (1, 0), "Shower": (0, 2)}
_FAR = [name for name in AFFORDANCE_NAMES if name not in _NEAR]
LAYOUT = {**_NEAR, **{name: (i % 8, 7 - i // 8) for i, name in enumerate(_FAR)}}


def _place(env: VectorTownletEnv, positions: list[tuple[int, int]], **fields: object) -> None:
    state = env.get_state()
    state = dataclasses.replace(state, positions=np.array(positions, dtype=np.int64), **fields)
    env.set_state(state)


@pytest.mark.parametrize(("name", "dim"), [("L0_0", 36), ("L0_5", 76), ("L1", 91), ("L2", 54), ("L3", 54)])
def test_obs_dims_match_upstream(name: str, dim: int) -> None:
    env = VectorTownletEnv(name, num_envs=3, seed=1)
    obs = env.reset()
    assert env.obs_dim == LEVELS[name].obs_dim == dim
    assert obs.shape == (3, dim) and obs.dtype == np.float32


def test_full_observation_l1_hand_worked() -> None:
    env = VectorTownletEnv("L1", num_envs=2, seed=0, layout=LAYOUT)
    env.reset()
    # env 0 stands on Bed (1, 0); env 1 stands on an empty cell (3, 2).
    _place(env, [(1, 0), (3, 2)], step_counts=np.array([0, 250]))
    obs = env.observe()

    grid = obs[:, :64]
    assert grid[0, 0 * 8 + 1] == 2.0  # agent on an affordance
    assert grid[0, 0 * 8 + 0] == 1.0  # Job, no agent
    assert grid[0, 2 * 8 + 0] == 1.0  # Shower (x=0, y=2) -> flat index y*g + x = 16
    assert grid[0].sum() == 15.0 and np.count_nonzero(grid[0]) == 14
    assert grid[1, 2 * 8 + 3] == 1.0  # agent alone on an empty cell
    assert grid[1].sum() == 15.0 and np.count_nonzero(grid[1]) == 15

    np.testing.assert_array_equal(obs[:, 64:72], [[1, 1, 1, 0.5, 1, 1, 1, 1]] * 2)
    one_hot = obs[:, 72:87]
    assert one_hot[0, AFFORDANCE_NAMES.index("Bed")] == 1.0 and one_hot[0].sum() == 1.0
    assert one_hot[1, NO_AFFORDANCE] == 1.0 and one_hot[1].sum() == 1.0
    # Extras without temporal mechanics: sin 0, cos 1, progress 0, lifetime step/1000.
    np.testing.assert_allclose(obs[:, 87:91], [[0, 1, 0, 0], [0, 1, 0, 0.25]])


def test_partial_observation_l2_hand_worked() -> None:
    env = VectorTownletEnv("L2", num_envs=2, seed=0, layout=LAYOUT)
    env.reset()
    _place(env, [(0, 0), (7, 3)])
    obs = env.observe()

    window = obs[0, :25].reshape(5, 5)  # [dy + 2, dx + 2]
    expected = np.zeros((5, 5))
    expected[2, 3] = 1.0  # Bed at dx=+1, dy=0 -> index 13
    expected[4, 2] = 1.0  # Shower at dx=0, dy=+2 -> index 22
    expected[2, 2] = 1.0  # centre: Job under the agent (the agent itself adds nothing)
    np.testing.assert_array_equal(window, expected)  # off-grid rows/columns are zeros
    assert obs[0, 13] == 1.0 and obs[0, 22] == 1.0 and obs[0, 12] == 1.0
    np.testing.assert_array_equal(obs[0, 25:27], [0.0, 0.0])
    assert obs[0, 35 + AFFORDANCE_NAMES.index("Job")] == 1.0

    np.testing.assert_allclose(obs[1, 25:27], [1.0, 3 / 7])
    right_of_grid = obs[1, :25].reshape(5, 5)[:, 3:]
    assert not right_of_grid.any()
    assert obs[1, 12] == 0.0  # the agent on an empty cell is not marked
    np.testing.assert_array_equal(obs[1, 27:35], [1, 1, 1, 0.5, 1, 1, 1, 1])
    assert obs[1, 35 + NO_AFFORDANCE] == 1.0
    np.testing.assert_array_equal(obs[:, 50:54], [[0, 1, 0, 0]] * 2)


def _reference_window(layout: np.ndarray, x: int, y: int, r: int) -> list[float]:
    g = layout.shape[0]
    cells = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            cx, cy = x + dx, y + dy
            inside = 0 <= cx < g and 0 <= cy < g
            cells.append(1.0 if inside and layout[cy, cx] != NO_AFFORDANCE else 0.0)
    return cells


@pytest.mark.parametrize("vision_range", [1, 2, 3])
def test_vectorised_window_matches_naive_loop(vision_range: int) -> None:
    rng = np.random.default_rng(7)
    n, g = 64, 8
    layouts = draw_layouts(rng, g, list(range(14)), n)
    positions = rng.integers(0, g, size=(n, 2))
    extras = encode_extras(np.zeros(n), np.zeros(n), np.zeros(n), temporal_mechanics=False)
    obs = encode_partial_observation(layouts, positions, np.ones((n, 8)), extras, vision_range)
    side = (2 * vision_range + 1) ** 2
    expected = [_reference_window(layouts[i], *positions[i], vision_range) for i in range(n)]
    np.testing.assert_array_equal(obs[:, :side], expected)
    np.testing.assert_allclose(obs[:, side : side + 2], positions / (g - 1), rtol=1e-6)


def test_temporal_extras_on_l3() -> None:
    env = VectorTownletEnv("L3", num_envs=1, seed=0, layout=LAYOUT)
    env.reset()
    _place(
        env,
        [(4, 4)],
        time_of_day=np.array([6]),
        interaction_progress=np.array([3]),
        step_counts=np.array([2000]),
    )
    np.testing.assert_allclose(env.observe()[0, 50:54], [1.0, 0.0, 0.3, 1.0], atol=1e-6)


def test_temporal_extras_forced_off_without_temporal_mechanics() -> None:
    extras = encode_extras(np.array([6]), np.array([3]), np.array([100]), temporal_mechanics=False)
    np.testing.assert_allclose(extras, [[0.0, 1.0, 0.0, 0.1]])
