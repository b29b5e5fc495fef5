"""Write training checkpoints in Hamlet's exact v2 layout (``DemoRunner.save_checkpoint``, reference section 4).

Used by the compact trainer and by tests that need files indistinguishable from a real Hamlet run. Only
plain containers, scalars and tensors go in, so ``torch.load(weights_only=True)`` reads the result, as it
reads Hamlet's own files.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from townlet.env import AFFORDANCE_NAMES, METER_NAMES
from townlet.inference.checkpoint import atomic_torch_save
from townlet.inference.filenames import training_checkpoint_name

__all__ = [
    "build_training_checkpoint",
    "rnd_state",
    "save_training_checkpoint",
]


def rnd_state(obs_dim: int, embed_dim: int = 128, epsilon: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """An RND exploration state as Hamlet saves it: two MLPs obs->256->128->embed and the predictor's Adam."""
    gen = torch.Generator().manual_seed(seed)

    def mlp() -> nn.Sequential:
        net = nn.Sequential(
            nn.Linear(obs_dim, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, embed_dim)
        )
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        return net

    fixed, predictor = mlp(), mlp()
    optimizer = torch.optim.Adam(predictor.parameters(), lr=1e-4)
    return {
        "fixed_network": fixed.state_dict(),
        "predictor_network": predictor.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epsilon": epsilon,
        "epsilon_min": 0.01,
        "epsilon_decay": 0.995,
        "obs_dim": obs_dim,
        "embed_dim": embed_dim,
    }


def build_training_checkpoint(
    q_network: nn.Module,
    *,
    episode: int,
    epsilon: float,
    training_config: Mapping[str, Any],
    config_dir: str,
    target_network: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    replay_buffer: Mapping[str, Any] | None = None,
    total_steps: int = 0,
    training_step_counter: int = 0,
    agent_stages: Sequence[int] = (1,),
    affordance_positions: Mapping[str, Sequence[int]] | None = None,
    survival_history: Sequence[int] = (),
    intrinsic_weight: float = 1.0,
    rnd: Mapping[str, Any] | None = None,
    timestamp: float | None = None,
) -> dict[str, Any]:
    """The dict Hamlet's runner passes to ``torch.save``, with every key of reference section 4.

    ``rnd`` is the run's RND state (`RNDExploration.state_dict`); without one a random stand-in is saved.
    """
    obs_dim = int(getattr(q_network, "obs_dim"))  # noqa: B009 - both Hamlet networks define it
    target = target_network if target_network is not None else q_network
    optimizer = optimizer or torch.optim.Adam(q_network.parameters(), lr=float(_population(training_config)["lr"]))
    num_agents = len(agent_stages)
    exploration = training_config.get("exploration", {})
    if rnd is None:
        rnd = rnd_state(obs_dim, int(exploration.get("embed_dim", 128)), epsilon)
    return {
        "version": 2,
        "episode": episode,
        "timestamp": time.time() if timestamp is None else timestamp,
        "population_state": {
            "version": 2,
            "q_network": OrderedDict(q_network.state_dict()),
            "optimizer": optimizer.state_dict(),
            "total_steps": total_steps,
            "exploration_state": {
                "rnd_state": dict(rnd),
                "current_intrinsic_weight": intrinsic_weight,
                "min_intrinsic_weight": 0.0,
                "variance_threshold": float(exploration.get("variance_threshold", 100.0)),
                "survival_window": int(exploration.get("survival_window", 100)),
                "decay_rate": 0.99,
                "survival_history": [int(s) for s in survival_history],
            },
            # Hamlet hard-codes action_dim 5 here (wrong: there are 6 actions); reproduced for fidelity.
            "universe_metadata": {
                "meter_count": 8,
                "meter_names": list(METER_NAMES),
                "version": "1.0",
                "obs_dim": obs_dim,
                "action_dim": 5,
            },
            "target_network": OrderedDict(target.state_dict()),
            "training_step_counter": training_step_counter,
            "replay_buffer": dict(replay_buffer) if replay_buffer is not None else _empty_replay(q_network),
        },
        "curriculum_state": {
            "agent_stages": torch.tensor(list(agent_stages), dtype=torch.int64),
            "episode_rewards": torch.zeros(num_agents),
            "episode_steps": torch.zeros(num_agents),
            "prev_avg_reward": torch.zeros(num_agents),
            "steps_at_stage": torch.zeros(num_agents),
        },
        "affordance_layout": {
            "positions": {k: [int(v[0]), int(v[1])] for k, v in (affordance_positions or {}).items()},
            "ordering": list(AFFORDANCE_NAMES),
        },
        "agent_ids": [f"agent_{i}" for i in range(num_agents)],
        "epsilon": epsilon,
        "training_config": _plain_config(training_config),
        "config_dir": config_dir,
    }


def save_training_checkpoint(checkpoint: Mapping[str, Any], directory: str | Path) -> Path:
    """Write ``checkpoint`` atomically as ``<directory>/checkpoint_epNNNNN.pt`` and return the path."""
    path = Path(directory) / training_checkpoint_name(int(checkpoint["episode"]))
    return atomic_torch_save(dict(checkpoint), path)


def _population(config: Mapping[str, Any]) -> Mapping[str, Any]:
    return {"lr": 2.5e-4, **config.get("population", {})}


def _empty_replay(q_network: nn.Module) -> dict[str, Any]:
    if getattr(q_network, "is_recurrent", False):
        return {"num_transitions": 0, "capacity": 10000, "episodes": []}
    return {
        "size": 0,
        "position": 0,
        "capacity": 10000,
        "observations": None,
        "actions": None,
        "rewards_extrinsic": None,
        "rewards_intrinsic": None,
        "next_observations": None,
        "dones": None,
    }


def _plain_config(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_config(v) for v in value]
    return value
