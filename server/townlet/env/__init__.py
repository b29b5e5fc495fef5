"""``townlet.env``: the Townlet world simulated in pure numpy, vectorised over N environments.

Quick start::

    from townlet.env import VectorTownletEnv, random_valid_actions
    import numpy as np

    env = VectorTownletEnv("L2", num_envs=64, seed=0)
    obs = env.reset()                                   # [64, 54] float32
    rng = np.random.default_rng(0)
    obs, reward, done, info = env.step(random_valid_actions(env.action_masks(), rng))
    env.reset_envs(done | info["truncated"])

This package never imports torch: it needs numpy only (``pip install ./sim`` installs just this package;
``townlet.env.gym`` also needs gymnasium). See ``docs/ENVIRONMENT.md``.
"""

from townlet.env.actions import ACTION_DIM, Action, apply_movement, compute_action_masks
from townlet.env.affordances import (
    AFFORDANCE_NAMES,
    AFFORDANCES,
    NO_AFFORDANCE,
    NUM_AFFORDANCE_TYPES,
    Affordance,
    is_open,
)
from townlet.env.config import L0_0, L0_5, L1, L2, L3, LEVELS, LevelConfig, get_level
from townlet.env.dynamics import (
    action_cost_table,
    apply_action_costs,
    apply_base_depletion,
    apply_cascades,
    apply_fitness_modulation,
    compute_reward,
    terminal_mask,
)
from townlet.env.errors import InvalidActionError, InvalidStateError, LevelConfigError, StateError, TownletEnvError
from townlet.env.evaluation import random_valid_actions, run_random_policy
from townlet.env.interactions import apply_instant_interactions, apply_multi_tick_interactions
from townlet.env.layout import draw_layouts, layout_from_positions, layout_positions
from townlet.env.meters import CASCADES, METER_NAMES, NUM_METERS, Cascade
from townlet.env.observation import (
    encode_extras,
    encode_full_observation,
    encode_partial_observation,
)
from townlet.env.state import EnvState, initial_meters, validate_state
from townlet.env.vector_env import Transition, VectorTownletEnv, training_layout, transition

__all__ = [
    "ACTION_DIM",
    "AFFORDANCES",
    "AFFORDANCE_NAMES",
    "CASCADES",
    "L0_0",
    "L0_5",
    "L1",
    "L2",
    "L3",
    "LEVELS",
    "METER_NAMES",
    "NO_AFFORDANCE",
    "NUM_AFFORDANCE_TYPES",
    "NUM_METERS",
    "Action",
    "Affordance",
    "Cascade",
    "EnvState",
    "InvalidActionError",
    "InvalidStateError",
    "LevelConfig",
    "LevelConfigError",
    "StateError",
    "TownletEnvError",
    "Transition",
    "VectorTownletEnv",
    "action_cost_table",
    "apply_action_costs",
    "apply_base_depletion",
    "apply_cascades",
    "apply_fitness_modulation",
    "apply_instant_interactions",
    "apply_movement",
    "apply_multi_tick_interactions",
    "compute_action_masks",
    "compute_reward",
    "draw_layouts",
    "encode_extras",
    "encode_full_observation",
    "encode_partial_observation",
    "get_level",
    "initial_meters",
    "is_open",
    "layout_from_positions",
    "layout_positions",
    "random_valid_actions",
    "run_random_policy",
    "terminal_mask",
    "training_layout",
    "transition",
    "validate_state",
]
