"""`TrainConfig`: every knob of the compact DQN trainer, one documented field each.

The ``help`` text of each field is what ``hamlet-train --help`` prints, so the dataclass is the single
place where a setting is named, defaulted and explained (cleanrl's ``Args`` habit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from townlet.env import LEVELS, LevelConfig, get_level, training_layout
from townlet.training.errors import TrainingConfigError

__all__ = ["TrainConfig", "network_type_for", "stage_for_multiplier", "training_layout"]

# Hamlet's curriculum table (reference 3.4): depletion multiplier of stages 1..4 (stage 5 repeats 1.0).
_STAGE_MULTIPLIERS = (0.2, 0.5, 0.8, 1.0)


def _doc(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    """A training run. One *episode* is one round of ``num_envs`` env episodes started together and run
    until every env has died, retired or hit the level's step limit (Hamlet's ``num_agents`` semantics)."""

    level: str = _doc("Townlet level: L0_0, L0_5, L1 (MLP), L2 or L3 (CNN+LSTM).", "L1")
    episodes: int = _doc("train until this many episodes are done in total (a resumed run continues to it)", 200)
    out: str = _doc("run folder: checkpoint_epNNNNN.pt and model_epNNNNN.pt are written here", "runs/train")
    seed: int = _doc("seeds the network init, the layout, every start cell and every random draw", 0)
    network: str = _doc("'auto' (MLP for full observability, LSTM for partial), 'simple' or 'recurrent'", "auto")
    num_envs: int = _doc("envs stepped together; all feed one replay buffer", 16)
    depletion_multiplier: float = _doc("curriculum scale of base meter depletion (Hamlet stage 1 = 0.2)", 1.0)
    relayout: bool = _doc("draw a fresh affordance layout per env episode (default: one fixed layout)", False)
    learning_rate: float = _doc("Adam learning rate", 2.5e-4)
    gamma: float = _doc("discount factor", 0.99)
    loss: str = _doc("TD loss: 'huber' (smooth L1, delta 1) or 'mse' (Hamlet's)", "huber")
    buffer_capacity: int = _doc("replay capacity in transitions (episodes are evicted whole for the LSTM)", 50_000)
    batch_size: int = _doc("transitions per gradient step (MLP) or sequences per step (LSTM)", 128)
    sequence_length: int = _doc("LSTM: steps per replayed sequence that carry a loss", 8)
    double_dqn: bool = _doc(
        "double DQN targets: the next action is the online network's argmax, valued by the target network", False
    )
    n_step: int = _doc(
        "LSTM: n-step returns, sum of n discounted rewards + gamma^n Q (cut at death, shortened at truncation)", 1
    )
    burn_in: int = _doc(
        "LSTM: R2D2 burn-in. Store the acting LSTM state with every step; replayed windows start from it and "
        "run this many steps without gradient or loss before the sequence_length trained ones (0: windows "
        "start from a zero state, as Hamlet)",
        0,
    )
    rnd_weight: float = _doc(
        "weight of Hamlet's RND novelty bonus in the TD targets (reward + weight * RND error; 0 = off). Decays "
        "x0.99 per env episode once the last 100 survivals have variance < 100 and mean > 50 (Hamlet's "
        "adaptive rule); the env reward and the evaluation never include it",
        0.0,
    )
    affordance_bonus: float = _doc(
        "episodic novelty bonus: added to the learner's reward the first time in an env episode that the agent "
        "uses each affordance type (0 = off); the env reward, the logged returns and the evaluation never "
        "include it",
        0.0,
    )
    learning_starts: int = _doc("transitions stored before the first gradient step", 2_000)
    train_frequency: int = _doc("one gradient step every this many batched env steps", 1)
    target_update_frequency: int = _doc("hard copy online -> target every this many gradient steps", 500)
    max_grad_norm: float = _doc("gradient norm clip", 10.0)
    epsilon_start: float = _doc("exploration rate of episode 0", 1.0)
    epsilon_decay: float = _doc("epsilon *= this after every episode", 0.98)
    epsilon_min: float = _doc("exploration floor", 0.05)
    checkpoint_every: int = _doc("write both checkpoints every this many episodes (and always at the end)", 50)
    keep_last: int = _doc(
        "keep only the newest N training checkpoints (checkpoint_ep*.pt) in --out, 0 = all; the small "
        "inference checkpoints (model_ep*.pt) are always kept",
        0,
    )

    def __post_init__(self) -> None:
        problems = []
        if self.level not in LEVELS and not _is_pack(self.level):
            problems.append(f"level {self.level!r} is not one of {sorted(LEVELS)}")
        if self.network not in ("auto", "simple", "recurrent"):
            problems.append(f"network must be 'auto', 'simple' or 'recurrent', got {self.network!r}")
        if self.loss not in ("huber", "mse"):
            problems.append(f"loss must be 'huber' or 'mse', got {self.loss!r}")
        for name in ("episodes", "num_envs", "buffer_capacity", "batch_size", "sequence_length", "train_frequency"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("target_update_frequency", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_step < 1 or self.burn_in < 0:
            problems.append(f"need n_step >= 1 and burn_in >= 0, got n_step {self.n_step}, burn_in {self.burn_in}")
        elif (self.n_step > 1 or self.burn_in > 0) and not problems and self.network_type != "recurrent":
            problems.append(
                f"n_step and burn_in apply to the LSTM's sequence replay; the {self.level} MLP learns from single "
                "transitions (use --network recurrent on L2/L3, or leave them at 1 and 0)"
            )
        if self.keep_last < 0:
            problems.append(f"keep_last must be >= 0 (0 keeps every checkpoint), got {self.keep_last}")
        if self.seed < 0 or self.learning_starts < 0 or self.depletion_multiplier < 0:
            problems.append("seed, learning_starts and depletion_multiplier must be >= 0")
        if not 0.0 <= self.gamma <= 1.0:
            problems.append(f"gamma must lie in [0, 1], got {self.gamma}")
        if not 0.0 <= self.epsilon_min <= self.epsilon_start <= 1.0 or not 0.0 < self.epsilon_decay <= 1.0:
            problems.append("need 0 <= epsilon_min <= epsilon_start <= 1 and 0 < epsilon_decay <= 1")
        if not self.rnd_weight >= 0.0:
            problems.append(f"rnd_weight must be >= 0 (0 turns RND off), got {self.rnd_weight}")
        if not self.affordance_bonus >= 0.0:
            problems.append(f"affordance_bonus must be >= 0 (0 turns it off), got {self.affordance_bonus}")
        if self.learning_rate <= 0 or self.max_grad_norm <= 0:
            problems.append("learning_rate and max_grad_norm must be > 0")
        if problems:
            raise TrainingConfigError("invalid training config: " + "; ".join(problems))

    @property
    def level_config(self) -> LevelConfig:
        return get_level(self.level)

    @property
    def network_type(self) -> str:
        """``"simple"`` or ``"recurrent"`` (``network="auto"`` resolved from the level)."""
        return network_type_for(self.level_config) if self.network == "auto" else self.network

    def epsilon_at(self, episode: int) -> float:
        """Exploration rate used during ``episode`` (0-based): ``max(min, start * decay**episode)``."""
        return max(self.epsilon_min, self.epsilon_start * self.epsilon_decay**episode)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, for the checkpoint's ``training_config``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainingConfigError(f"unknown training config keys {unknown}; known: {sorted(known)}")
        return cls(**values)


def network_type_for(level: LevelConfig) -> str:
    """Hamlet's choice: the LSTM for partial observability, the MLP otherwise."""
    return "recurrent" if level.partial_observability else "simple"


def stage_for_multiplier(multiplier: float) -> int:
    """Hamlet curriculum stage (1-4) whose depletion multiplier is the smallest one >= ``multiplier``."""
    for stage, value in enumerate(_STAGE_MULTIPLIERS, start=1):
        if multiplier <= value + 1e-9:
            return stage
    return len(_STAGE_MULTIPLIERS)


def _is_pack(name: str) -> bool:
    return any(name == lvl.pack for lvl in LEVELS.values())
