"""The 14 Townlet affordances (``affordances.yaml``, ``interaction_type: dual``) and their lookup tables.

The tuple order is the observation vocabulary: index 0..13 is an affordance, index 14
(:data:`NO_AFFORDANCE`) means "nothing here". Amounts are in meter units (money 0.01 = $1). Instant
values are used without temporal mechanics (L0-L2); the multi-tick values with them (L3): a per-tick cost
and effect on every tick, and a completion bonus on the last one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from townlet.env.meters import METER_DTYPE, METER_NAMES, NUM_METERS

__all__ = [
    "AFFORDANCES",
    "AFFORDANCE_NAMES",
    "NO_AFFORDANCE",
    "NUM_AFFORDANCE_TYPES",
    "TABLES",
    "Affordance",
    "AffordanceTables",
    "is_open",
]


def _effects(**deltas: float) -> Mapping[str, float]:
    unknown = set(deltas) - set(METER_NAMES)
    if unknown:
        raise ValueError(f"unknown meters {sorted(unknown)}; expected names from {METER_NAMES}")
    return MappingProxyType(dict(deltas))


@dataclass(frozen=True)
class Affordance:
    """One affordance. Costs are money (meter units); hours are ``[open_hour, close_hour)`` on a 24-tick
    clock, ``close_hour > 24`` wrapping past midnight."""

    name: str
    instant_cost: float
    instant_effects: Mapping[str, float]
    ticks: int
    tick_cost: float
    tick_effects: Mapping[str, float]
    completion_effects: Mapping[str, float]
    open_hour: int = 0
    close_hour: int = 24


AFFORDANCES: tuple[Affordance, ...] = (
    Affordance(
        "Bed", 0.05, _effects(energy=0.50, health=0.02),
        5, 0.01, _effects(energy=0.075), _effects(energy=0.125, health=0.02),
    ),
    Affordance(
        "LuxuryBed", 0.11, _effects(energy=0.75, health=0.05),
        6, 0.01833, _effects(energy=0.09375), _effects(energy=0.1875, health=0.05),
    ),
    Affordance(
        "Shower", 0.03, _effects(hygiene=0.40),
        3, 0.01, _effects(hygiene=0.10), _effects(hygiene=0.10),
    ),
    Affordance(
        "HomeMeal", 0.03, _effects(satiation=0.45, health=0.03),
        3, 0.01, _effects(satiation=0.1125), _effects(satiation=0.1125, health=0.03),
    ),
    Affordance(
        "FastFood", 0.10, _effects(satiation=0.45, energy=0.15, social=0.01, fitness=-0.03, health=-0.02),
        2, 0.05, _effects(satiation=0.16875, energy=0.05625),
        _effects(satiation=0.1125, energy=0.0375, social=0.01, fitness=-0.03, health=-0.02),
    ),
    Affordance(
        "Doctor", 0.08, _effects(health=0.25),
        2, 0.04, _effects(health=0.09375), _effects(health=0.0625), 8, 18,
    ),
    Affordance(
        "Hospital", 0.15, _effects(health=0.40),
        3, 0.05, _effects(health=0.10), _effects(health=0.10),
    ),
    Affordance(
        "Therapist", 0.15, _effects(mood=0.40),
        3, 0.05, _effects(mood=0.10), _effects(mood=0.10), 8, 18,
    ),
    Affordance(
        "Recreation", 0.06, _effects(mood=0.25, energy=0.12),
        2, 0.03, _effects(mood=0.09375, energy=0.045), _effects(mood=0.0625, energy=0.03), 8, 22,
    ),
    Affordance(
        "Bar", 0.15,
        _effects(social=0.50, mood=0.25, satiation=0.30, energy=-0.20, hygiene=-0.15, health=-0.05),
        2, 0.075, _effects(social=0.1875, mood=0.09375, satiation=0.1125),
        _effects(social=0.125, mood=0.0625, satiation=0.075, energy=-0.20, hygiene=-0.15, health=-0.05),
        18, 28,
    ),
    Affordance(
        "Job", 0.0, _effects(money=0.225, energy=-0.15, social=0.02, health=-0.03),
        4, 0.0, _effects(money=0.05625),
        _effects(money=0.05625, energy=-0.15, social=0.02, health=-0.03), 8, 18,
    ),
    Affordance(
        "Labor", 0.0, _effects(money=0.150, energy=-0.20, fitness=-0.05, health=-0.05, social=0.01),
        4, 0.0, _effects(money=0.075),
        _effects(money=0.075, energy=-0.20, fitness=-0.05, health=-0.05, social=0.01), 8, 18,
    ),
    Affordance(
        "Gym", 0.08, _effects(fitness=0.30, energy=-0.08),
        3, 0.02667, _effects(fitness=0.075), _effects(fitness=0.075, energy=-0.08), 6, 22,
    ),
    Affordance(
        "Park", 0.0, _effects(fitness=0.20, social=0.15, mood=0.15, energy=-0.15),
        3, 0.0, _effects(fitness=0.05, social=0.0375, mood=0.0375),
        _effects(fitness=0.05, social=0.0375, mood=0.0375, energy=-0.15), 6, 22,
    ),
)  # fmt: skip

AFFORDANCE_NAMES: tuple[str, ...] = tuple(a.name for a in AFFORDANCES)
NUM_AFFORDANCE_TYPES = len(AFFORDANCES)
#: Vocabulary index meaning "no affordance" (the last slot of the one-hot block).
NO_AFFORDANCE = NUM_AFFORDANCE_TYPES


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _effect_matrix(rows: list[Mapping[str, float]]) -> np.ndarray:
    matrix = np.zeros((len(rows) + 1, NUM_METERS), dtype=METER_DTYPE)  # + the all-zero NO_AFFORDANCE row
    for i, effects in enumerate(rows):
        for meter, delta in effects.items():
            matrix[i, METER_NAMES.index(meter)] = delta
    return _frozen(matrix)


@dataclass(frozen=True)
class AffordanceTables:
    """The affordance table as arrays indexed by vocabulary index ``[15, ...]``; row 14 is the inert
    "no affordance" row (no cost, no effect, never open, 1 tick). Costs and effects are float32, as Hamlet
    loads them, so a price is compared with money exactly as Hamlet compares it."""

    instant_cost: np.ndarray  # [15]
    instant_effects: np.ndarray  # [15, 8]
    ticks: np.ndarray  # [15] int
    tick_cost: np.ndarray  # [15]
    tick_effects: np.ndarray  # [15, 8]
    completion_effects: np.ndarray  # [15, 8]
    open_hour: np.ndarray  # [15] int
    close_hour: np.ndarray  # [15] int

    @classmethod
    def build(cls, affordances: tuple[Affordance, ...]) -> AffordanceTables:
        def column(values: list[float], pad: float, dtype: type) -> np.ndarray:
            return _frozen(np.array([*values, pad], dtype=dtype))

        return cls(
            instant_cost=column([a.instant_cost for a in affordances], 0.0, METER_DTYPE),
            instant_effects=_effect_matrix([a.instant_effects for a in affordances]),
            ticks=column([a.ticks for a in affordances], 1, np.int64),
            tick_cost=column([a.tick_cost for a in affordances], 0.0, METER_DTYPE),
            tick_effects=_effect_matrix([a.tick_effects for a in affordances]),
            completion_effects=_effect_matrix([a.completion_effects for a in affordances]),
            open_hour=column([a.open_hour for a in affordances], 0, np.int64),
            close_hour=column([a.close_hour for a in affordances], 0, np.int64),
        )


TABLES = AffordanceTables.build(AFFORDANCES)


def is_open(affordance: np.ndarray, hour: np.ndarray, tables: AffordanceTables = TABLES) -> np.ndarray:
    """Whether each affordance is open at each hour.

    Args:
        affordance: ``[N]`` vocabulary indices (``NO_AFFORDANCE`` is never open).
        hour: ``[N]`` (or scalar) hour of day, any integer (taken modulo 24).

    Returns:
        ``[N]`` bool.
    """
    hour = np.asarray(hour) % 24
    open_hour = tables.open_hour[affordance]
    close_hour = tables.close_hour[affordance]
    plain = (hour >= open_hour) & (hour < close_hour)
    wrapped = (hour >= open_hour) | (hour < close_hour - 24)
    result: np.ndarray = np.where(close_hour > 24, wrapped, plain)
    return result
