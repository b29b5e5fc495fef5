"""The five Townlet level packs (L0_0, L0_5, L1, L2, L3) as frozen dataclasses.

Values follow the upstream ``training.yaml`` / ``bars.yaml`` of each pack (see ``docs/ENVIRONMENT.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from townlet.env.affordances import AFFORDANCE_NAMES, NUM_AFFORDANCE_TYPES
from townlet.env.errors import LevelConfigError
from townlet.env.meters import AGENT_LIFESPAN, NUM_METERS

__all__ = ["L0_0", "L0_5", "L1", "L2", "L3", "LEVELS", "LevelConfig", "get_level"]


# --- levels (training.yaml + bars.yaml per pack) ---------------------------------------------------------


@dataclass(frozen=True)
class LevelConfig:
    """One Townlet level pack.

    Attributes:
        name: short name (``"L1"``); ``pack`` is the upstream folder name.
        grid_size: side of the square grid.
        partial_observability: 5x5 egocentric window (``vision_range`` 2) instead of the full grid.
        enabled_affordances: names of the deployed affordances, in vocabulary order.
        initial_money: starting money in meter units (1.0 = $100).
        max_steps_per_episode: truncation horizon (``curriculum.max_steps_per_episode``).
        move_energy_cost / wait_energy_cost / interact_energy_cost: per-action energy costs.
        temporal_mechanics: day/night clock, opening hours and multi-tick interactions.
    """

    name: str
    pack: str
    grid_size: int
    partial_observability: bool
    enabled_affordances: tuple[str, ...]
    initial_money: float
    max_steps_per_episode: int
    wait_energy_cost: float
    move_energy_cost: float = 0.005
    interact_energy_cost: float = 0.0
    vision_range: int = 2
    temporal_mechanics: bool = False
    agent_lifespan: int = AGENT_LIFESPAN

    def __post_init__(self) -> None:
        unknown = [a for a in self.enabled_affordances if a not in AFFORDANCE_NAMES]
        if unknown:
            raise LevelConfigError(
                f"level {self.name}: unknown affordances {unknown}; expected names from {AFFORDANCE_NAMES}"
            )
        if len(self.enabled_affordances) >= self.grid_size**2:
            raise LevelConfigError(
                f"level {self.name}: {len(self.enabled_affordances)} affordances need more than "
                f"{self.grid_size**2} cells; enlarge grid_size or deploy fewer affordances"
            )
        if not self.wait_energy_cost < self.move_energy_cost:
            raise LevelConfigError(
                f"level {self.name}: wait_energy_cost ({self.wait_energy_cost}) must be below "
                f"move_energy_cost ({self.move_energy_cost}), otherwise waiting is never preferable"
            )
        if self.grid_size < 2 or self.max_steps_per_episode < 1 or self.vision_range < 0:
            raise LevelConfigError(
                f"level {self.name}: need grid_size >= 2, max_steps_per_episode >= 1, vision_range >= 0; "
                f"got {self.grid_size}, {self.max_steps_per_episode}, {self.vision_range}"
            )

    @property
    def affordance_ids(self) -> tuple[int, ...]:
        """Vocabulary indices of the deployed affordances."""
        return tuple(AFFORDANCE_NAMES.index(a) for a in self.enabled_affordances)

    @property
    def window_size(self) -> int:
        return 2 * self.vision_range + 1

    @property
    def obs_dim(self) -> int:
        """Length of one observation vector (section "Observation layout" of docs/ENVIRONMENT.md)."""
        shared = NUM_METERS + (NUM_AFFORDANCE_TYPES + 1) + 4
        if self.partial_observability:
            return self.window_size**2 + 2 + shared
        return self.grid_size**2 + shared


_ALL = AFFORDANCE_NAMES

L0_0 = LevelConfig(
    name="L0_0",
    pack="L0_0_minimal",
    grid_size=3,
    partial_observability=False,
    enabled_affordances=("Bed",),
    initial_money=0.25,
    max_steps_per_episode=1000,
    wait_energy_cost=0.003,
)
L0_5 = LevelConfig(
    name="L0_5",
    pack="L0_5_dual_resource",
    grid_size=7,
    partial_observability=False,
    enabled_affordances=("Bed", "HomeMeal", "Hospital", "Job"),
    initial_money=1.0,
    max_steps_per_episode=500,
    wait_energy_cost=0.0049,
)
L1 = LevelConfig(
    name="L1",
    pack="L1_full_observability",
    grid_size=8,
    partial_observability=False,
    enabled_affordances=_ALL,
    initial_money=0.5,
    max_steps_per_episode=500,
    wait_energy_cost=0.001,
)
L2 = LevelConfig(
    name="L2",
    pack="L2_partial_observability",
    grid_size=8,
    partial_observability=True,
    enabled_affordances=_ALL,
    initial_money=0.5,
    max_steps_per_episode=500,
    wait_energy_cost=0.001,
)
L3 = LevelConfig(
    name="L3",
    pack="L3_temporal_mechanics",
    grid_size=8,
    partial_observability=True,
    enabled_affordances=_ALL,
    initial_money=0.5,
    max_steps_per_episode=500,
    wait_energy_cost=0.001,
    temporal_mechanics=True,
)

#: Levels by short name.
LEVELS: dict[str, LevelConfig] = {lvl.name: lvl for lvl in (L0_0, L0_5, L1, L2, L3)}


def get_level(level: str | LevelConfig) -> LevelConfig:
    """Resolve a level given as a :class:`LevelConfig`, a short name (``"L1"``) or a pack name
    (``"L1_full_observability"``)."""
    if isinstance(level, LevelConfig):
        return level
    if isinstance(level, str):
        for cfg in LEVELS.values():
            if level in (cfg.name, cfg.pack):
                return cfg
    known = ", ".join(f"{c.name} ({c.pack})" for c in LEVELS.values())
    raise LevelConfigError(f"unknown level {level!r}; expected a LevelConfig or one of: {known}")
