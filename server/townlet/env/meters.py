"""Meters (``bars.yaml``) and threshold cascades (``cascades.yaml``), identical in every level pack.

Meters are normalised to [0, 1] and stored in the order of :data:`METER_NAMES`, which is also their order
in the observation. Money 1.0 = $100. Like Hamlet's float32 tensors, every meter value and every rate is
float32 (:data:`METER_DTYPE`), so sums and affordability checks round exactly as Hamlet's do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "AGENT_LIFESPAN",
    "BASE_DEPLETION",
    "CASCADES",
    "CASCADE_CATEGORIES",
    "ENERGY",
    "FITNESS",
    "HEALTH",
    "HYGIENE",
    "METER_DTYPE",
    "METER_INITIAL",
    "METER_NAMES",
    "MONEY",
    "MOOD",
    "NUM_METERS",
    "SATIATION",
    "SOCIAL",
    "Cascade",
]

# --- meters (bars.yaml), in storage = observation order ------------------------------------------------

METER_NAMES: tuple[str, ...] = (
    "energy",
    "hygiene",
    "satiation",
    "money",
    "mood",
    "social",
    "health",
    "fitness",
)
NUM_METERS = len(METER_NAMES)
ENERGY, HYGIENE, SATIATION, MONEY, MOOD, SOCIAL, HEALTH, FITNESS = range(NUM_METERS)

#: dtype of every meter array and every rate applied to meters (Hamlet keeps meters in float32 tensors).
METER_DTYPE = np.float32

#: Initial meter values; money is overridden per level (``LevelConfig.initial_money``).
METER_INITIAL = np.array([1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0], dtype=METER_DTYPE)
METER_INITIAL.setflags(write=False)

#: Base depletion per step, before the curriculum multiplier.
BASE_DEPLETION = np.array([0.005, 0.003, 0.004, 0.0, 0.001, 0.006, 0.0, 0.002], dtype=METER_DTYPE)
BASE_DEPLETION.setflags(write=False)

#: Steps after which an agent retires (+1.0 reward, done). Upstream constructor default, not in YAML.
AGENT_LIFESPAN = 1000


# --- cascades (cascades.yaml, identical in every pack) ---------------------------------------------------


@dataclass(frozen=True)
class Cascade:
    """While ``meters[source] < threshold``, subtract ``strength * (threshold - source) / threshold`` from
    ``meters[target]`` each step."""

    category: str
    source: int
    target: int
    strength: float
    threshold: float = 0.3


#: Categories in the order they are applied within one step.
CASCADE_CATEGORIES: tuple[str, ...] = (
    "primary_to_pivotal",
    "secondary_to_primary",
    "secondary_to_pivotal_weak",
)

#: Cascades in application order (category order, then YAML order inside a category).
CASCADES: tuple[Cascade, ...] = (
    Cascade("primary_to_pivotal", SATIATION, HEALTH, 0.004),
    Cascade("primary_to_pivotal", SATIATION, ENERGY, 0.005),
    Cascade("primary_to_pivotal", MOOD, ENERGY, 0.005),
    Cascade("secondary_to_primary", HYGIENE, SATIATION, 0.002),
    Cascade("secondary_to_primary", HYGIENE, FITNESS, 0.002),
    Cascade("secondary_to_primary", HYGIENE, MOOD, 0.003),
    Cascade("secondary_to_primary", SOCIAL, MOOD, 0.004),
    Cascade("secondary_to_pivotal_weak", HYGIENE, HEALTH, 0.0005),
    Cascade("secondary_to_pivotal_weak", HYGIENE, ENERGY, 0.0005),
    Cascade("secondary_to_pivotal_weak", SOCIAL, ENERGY, 0.0008),
)
