"""Two rules where Hamlet's own environment decides: retirement on the step of death, and float32 money.

Found by comparing transitions with Hamlet's ``VectorizedHamletEnv``: Hamlet pays the retirement bonus to an
agent that dies on the very step it reaches its lifespan, and compares money with prices as float32 values.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from townlet.env import AFFORDANCE_NAMES, L1, Action, VectorTownletEnv, apply_instant_interactions, initial_meters
from townlet.env.meters import ENERGY, HEALTH, MONEY

BED = AFFORDANCE_NAMES.index("Bed")
L1_LAYOUT = {name: (i % 8, i // 8) for i, name in enumerate(AFFORDANCE_NAMES)}  # Bed (0, 0), Shower (2, 0) ...


def _env_at(level: object, meters: np.ndarray, position: tuple[int, int], multiplier: float = 1.0) -> VectorTownletEnv:
    env = VectorTownletEnv(level, 1, seed=0, layout=L1_LAYOUT, depletion_multiplier=multiplier)  # type: ignore[arg-type]
    env.reset()
    env.set_state(dataclasses.replace(env.get_state(), meters=meters[None, :], positions=np.array([position])))
    return env


# --- retirement -------------------------------------------------------------------------------------------


def test_agent_dying_on_its_retirement_step_still_gets_the_bonus() -> None:
    level = dataclasses.replace(L1, agent_lifespan=2)
    meters = initial_meters(level, 1)[0]
    meters[ENERGY] = np.float32(0.0075)  # one WAIT (0.001) + base depletion (0.005) per step: dead on step 2
    env = _env_at(level, meters, position=(7, 7))
    _, reward, done, info = env.step([Action.WAIT])
    assert not done[0] and reward[0] > 0
    _, reward, done, info = env.step([Action.WAIT])
    assert info["died"][0] and info["retired"][0] and done[0]
    assert reward[0] == np.float32(1.0)  # 0.0 for the death + 1.0 retirement bonus


def test_agent_dying_before_its_lifespan_gets_no_bonus() -> None:
    level = dataclasses.replace(L1, agent_lifespan=3)
    meters = initial_meters(level, 1)[0]
    meters[ENERGY] = np.float32(0.0075)
    env = _env_at(level, meters, position=(7, 7))
    env.step([Action.WAIT])
    _, reward, done, info = env.step([Action.WAIT])
    assert info["died"][0] and not info["retired"][0] and done[0]
    assert reward[0] == 0.0


# --- float32 money ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dollars"), [("Recreation", 6), ("Doctor", 8), ("Gym", 8), ("Bed", 5)])
def test_money_exactly_equal_to_the_price_pays_it(name: str, dollars: int) -> None:
    meters = initial_meters(L1, 1)
    meters[0, MONEY] = np.float32(dollars / 100)  # what a Hamlet state holds: the price as float32
    index = AFFORDANCE_NAMES.index(name)
    out, success = apply_instant_interactions(meters, np.array([index]), np.array([True]))
    assert success[0], f"{name} must sell at exactly ${dollars}"
    assert out[0, MONEY] == 0.0


def test_one_float32_step_below_the_price_does_not_pay() -> None:
    meters = initial_meters(L1, 1)
    meters[0, MONEY] = np.nextafter(np.float32(0.06), np.float32(0.0))
    _, success = apply_instant_interactions(meters, np.array([AFFORDANCE_NAMES.index("Recreation")]), np.array([True]))
    assert not success[0]


def _beds_bought(start_money: float, steps: int) -> int:
    meters = initial_meters(L1, 1)[0]
    meters[ENERGY] = np.float32(0.3)
    meters[MONEY] = np.float32(start_money)
    env = _env_at(L1, meters, position=L1_LAYOUT["Bed"], multiplier=0.0)
    bought = 0
    for _ in range(steps):
        _, _, done, info = env.step([Action.INTERACT])
        assert not done[0]
        bought += int(info["successful_interactions"][0] == BED)
    return bought


@pytest.mark.parametrize(("dollars", "beds"), [(50, 9), (100, 19)])
def test_float32_money_buys_one_bed_fewer_than_exact_arithmetic(dollars: int, beds: int) -> None:
    # After n float32 subtractions of 0.05 the rest is just under float32(0.05): $50 buys 9 Beds, not 10.
    assert _beds_bought(dollars / 100, steps=beds + 5) == beds


def test_money_left_after_nine_beds_is_hamlets_float32_value() -> None:
    meters = initial_meters(L1, 1)
    for _ in range(9):
        meters, success = apply_instant_interactions(meters, np.array([BED]), np.array([True]))
        assert success[0]
    assert meters.dtype == np.float32
    assert meters[0, MONEY] == np.float32(0.049999963)
    assert meters[0, HEALTH] == 1.0
