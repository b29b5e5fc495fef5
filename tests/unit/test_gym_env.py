"""The Gymnasium interface: registered ids, the env checker, masks in info, NEXT_STEP autoreset."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import townlet.env.gym  # noqa: F401  (registers Townlet/*)
from townlet.env import AFFORDANCE_NAMES, LEVELS, Action, VectorTownletEnv
from townlet.env.gym import ENV_IDS, TownletEnv, TownletVectorEnv
from townlet.env.meters import ENERGY

LAYOUT = {name: (i % 8, i // 8) for i, name in enumerate(AFFORDANCE_NAMES)}  # Bed (0, 0) ... Park (5, 1)


def test_every_level_is_registered() -> None:
    assert set(ENV_IDS.values()) == {f"Townlet/{name}-v0" for name in LEVELS}
    for name, env_id in ENV_IDS.items():
        assert gymnasium.spec(env_id).kwargs == {"level": name}


@pytest.mark.parametrize("env_id", sorted(ENV_IDS.values()))
def test_env_checker_passes_without_warnings(env_id: str) -> None:
    env = gymnasium.make(env_id, render_mode="ansi" if env_id.endswith("L1-v0") else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checker warning is a failure here
        check_env(env.unwrapped, skip_render_check=not env_id.endswith("L1-v0"))
    env.close()


def test_make_by_module_path_needs_no_import() -> None:
    env = gymnasium.make("townlet.env.gym:Townlet/L2-v0", depletion_multiplier=0.2)
    assert env.unwrapped.simulator.depletion_multiplier == 0.2
    obs, _ = env.reset(seed=0)
    assert obs.shape == (54,) and obs.dtype == np.float32


def test_same_seed_same_episode_and_sim_equivalence() -> None:
    env = gymnasium.make("Townlet/L1-v0")
    sim = VectorTownletEnv("L1", 1, seed=5)
    obs, info = env.reset(seed=5)
    np.testing.assert_array_equal(obs, sim.reset()[0])
    for _ in range(60):
        action = env.action_space.sample(mask=info["action_mask"])
        obs, reward, terminated, truncated, info = env.step(action)
        want_obs, want_reward, _, _ = sim.step(np.array([action]))
        np.testing.assert_array_equal(obs, want_obs[0])
        assert reward == float(want_reward[0])
        assert info["action_mask"].dtype == np.int8
        np.testing.assert_array_equal(info["action_mask"], sim.action_masks()[0].astype(np.int8))
        if terminated or truncated:
            break


def test_action_mask_marks_interact_only_on_an_affordance() -> None:
    env = TownletEnv("L1", layout=LAYOUT)
    env.reset(seed=0)
    sim = env.simulator
    sim.set_state(dataclasses.replace(sim.get_state(), positions=np.array([[0, 0]])))
    _, _, _, _, info = env.step(Action.WAIT)
    np.testing.assert_array_equal(info["action_mask"], [0, 1, 0, 1, 1, 1])  # corner, on the Bed
    _, _, _, _, info = env.step(Action.INTERACT)
    assert info["successful_interaction"] == "Bed"


def test_death_terminates_and_mask_keeps_one_choice() -> None:
    env = TownletEnv("L1", layout=LAYOUT)
    env.reset(seed=0)
    sim = env.simulator
    meters = sim.get_state().meters.copy()
    meters[0, ENERGY] = 0.001
    sim.set_state(dataclasses.replace(sim.get_state(), meters=meters, positions=np.array([[7, 7]])))
    _, reward, terminated, truncated, info = env.step(Action.WAIT)
    assert terminated and not truncated and reward == 0.0
    np.testing.assert_array_equal(info["action_mask"], [0, 0, 0, 0, 0, 1])


def test_ansi_render_shows_the_agent_and_the_affordances() -> None:
    env = TownletEnv("L0_0", render_mode="ansi", layout={"Bed": (1, 1)})
    env.reset(seed=0)
    sim = env.simulator
    sim.set_state(dataclasses.replace(sim.get_state(), positions=np.array([[0, 2]])))
    text = env.render()
    assert text is not None
    assert text.splitlines()[:3] == [". . .", ". B .", "@ . ."]


# --- vector env -------------------------------------------------------------------------------------------


def test_make_vec_uses_the_batched_simulator() -> None:
    envs = gymnasium.make_vec("Townlet/L2-v0", num_envs=8, vectorization_mode="vector_entry_point")
    assert isinstance(envs.unwrapped, TownletVectorEnv)
    obs, info = envs.reset(seed=3)
    assert obs.shape == (8, 54) and envs.single_observation_space.contains(obs[0])
    assert info["action_mask"].shape == (8, 6) and info["_action_mask"].all()
    sim = VectorTownletEnv("L2", 8, seed=3)
    np.testing.assert_array_equal(obs, sim.reset())
    envs.close()


def test_vector_env_autoresets_on_the_next_step() -> None:
    envs = TownletVectorEnv("L1", num_envs=3, layout=LAYOUT)
    envs.reset(seed=0)
    sim = envs.simulator
    meters = sim.get_state().meters.copy()
    meters[1, ENERGY] = 0.001  # env 1 dies on the first step
    sim.set_state(dataclasses.replace(sim.get_state(), meters=meters))
    wait = np.full(3, Action.WAIT)
    _, reward, terminated, truncated, info = envs.step(wait)
    np.testing.assert_array_equal(terminated, [False, True, False])
    assert not truncated.any() and reward[1] == 0.0
    _, reward, terminated, truncated, info = envs.step(wait)  # env 1 restarts, its action ignored
    assert not terminated.any() and reward[1] == 0.0
    np.testing.assert_array_equal(info["step_count"], [2, 0, 2])
    assert sim.get_state().meters[1, ENERGY] == 1.0
    _, _, _, _, info = envs.step(wait)
    np.testing.assert_array_equal(info["step_count"], [3, 1, 3])


def test_vector_env_partial_reset_by_mask() -> None:
    envs = TownletVectorEnv("L1", num_envs=2, layout=LAYOUT)
    envs.reset(seed=0)
    envs.step(np.array([Action.WAIT, Action.WAIT]))
    _, info = envs.reset(options={"reset_mask": np.array([True, False])})
    np.testing.assert_array_equal(info["step_count"], [0, 1])


def test_vector_env_random_steps_stay_in_the_spaces() -> None:
    envs = TownletVectorEnv("L3", num_envs=4)
    obs, _ = envs.reset(seed=1)
    assert envs.observation_space.contains(obs)
    for _ in range(30):
        obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
        assert envs.observation_space.contains(obs)
        assert reward.dtype == np.float32 and terminated.dtype == bool and truncated.dtype == bool


@pytest.mark.slow  # starts a Python process
def test_gym_module_imports_no_torch() -> None:
    code = "import sys, townlet.env.gym; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
