"""Build Hamlet training runs on disk for tests: v2 checkpoints exactly in Hamlet's layout, both networks.

Each checkpoint carries what a real run saves (reference section 4): online and target networks, an Adam
state after real gradient steps, RND exploration state, a replay buffer (the simple net's stored at full
capacity, as Hamlet does), curriculum state, the affordance layout, epsilon and the parsed training.yaml.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.training.checkpoint_v2 import build_training_checkpoint, save_training_checkpoint

L1_CONFIG: dict[str, Any] = {
    "environment": {"grid_size": 8, "partial_observability": False, "vision_range": 2, "enabled_affordances": None},
    "population": {
        "num_agents": 1,
        "learning_rate": 2.5e-4,
        "gamma": 0.99,
        "replay_buffer_capacity": 10000,
        "network_type": "simple",
    },
    "curriculum": {"max_steps_per_episode": 500, "survival_advance_threshold": 0.7},
    "exploration": {
        "embed_dim": 128,
        "initial_intrinsic_weight": 1.0,
        "variance_threshold": 100,
        "survival_window": 100,
    },
    "training": {"device": "cuda", "max_episodes": 5000, "batch_size": 64, "epsilon_decay": 0.995},
}
L2_CONFIG: dict[str, Any] = copy.deepcopy(L1_CONFIG)
L2_CONFIG["environment"]["partial_observability"] = True
L2_CONFIG["population"]["network_type"] = "recurrent"
L2_CONFIG["population"]["learning_rate"] = 1e-4


def make_network(network_type: str, seed: int = 0) -> torch.nn.Module:
    """A seeded Hamlet network: "simple" is L1's MLP (obs 91), "recurrent" is L2's CNN+LSTM (obs 54)."""
    torch.manual_seed(seed)
    return SimpleQNetwork(91, 6) if network_type == "simple" else RecurrentSpatialQNetwork(action_dim=6)


def _trained_optimizer(network: torch.nn.Module, steps: int = 2) -> torch.optim.Adam:
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    obs = torch.rand(4, int(network.obs_dim))
    for _ in range(steps):
        optimizer.zero_grad()
        q, _ = network(obs)
        q.pow(2).mean().backward()
        optimizer.step()
    return optimizer


def _replay(network_type: str, obs_dim: int, capacity: int) -> dict[str, Any]:
    if network_type == "simple":
        size = capacity // 4
        storage = torch.zeros(capacity, obs_dim)
        return {
            "size": size,
            "position": size,
            "capacity": capacity,
            "observations": storage,
            "actions": torch.zeros(capacity, dtype=torch.int64),
            "rewards_extrinsic": torch.zeros(capacity),
            "rewards_intrinsic": torch.zeros(capacity),
            "next_observations": torch.zeros(capacity, obs_dim),
            "dones": torch.zeros(capacity, dtype=torch.bool),
        }
    episodes = [
        {
            "observations": torch.rand(n, obs_dim),
            "actions": torch.zeros(n, dtype=torch.int64),
            "rewards_extrinsic": torch.rand(n),
            "rewards_intrinsic": torch.rand(n),
            "dones": torch.zeros(n, dtype=torch.bool),
        }
        for n in (40, 75, 120)
    ]
    return {"num_transitions": 235, "capacity": capacity, "episodes": episodes}


def write_training_checkpoint(
    directory: Path,
    network_type: str,
    episode: int = 100,
    seed: int = 0,
    epsilon: float = 0.6058,
    stage: int = 3,
    capacity: int = 10000,
) -> Path:
    """Write one ``checkpoint_epNNNNN.pt`` of a seeded network; returns its path."""
    network = make_network(network_type, seed)
    optimizer = _trained_optimizer(network)
    config = L1_CONFIG if network_type == "simple" else L2_CONFIG
    checkpoint = build_training_checkpoint(
        network,
        episode=episode,
        epsilon=epsilon,
        training_config=config,
        config_dir=f"configs/{'L1_full_observability' if network_type == 'simple' else 'L2_partial_observability'}",
        target_network=copy.deepcopy(network),
        optimizer=optimizer,
        replay_buffer=_replay(network_type, int(network.obs_dim), capacity),
        total_steps=episode * 37,
        training_step_counter=episode * 9,
        agent_stages=[stage],
        survival_history=[31, 44, 58],
        affordance_positions={"Bed": [1, 2], "Job": [5, 5]},
        timestamp=1_762_000_000.0 + episode,
    )
    return save_training_checkpoint(checkpoint, directory)


def retag_as_cuda(path: Path) -> None:
    """Rewrite a torch zip checkpoint so every storage claims to live on ``cuda:0``, as a file saved on a GPU
    does. Loading it without ``map_location`` then fails on a CPU-only machine, exactly like a real one."""
    import io
    import zipfile

    with zipfile.ZipFile(path) as zin:
        entries = [(name, zin.read(name)) for name in zin.namelist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for name, data in entries:
            if name.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data, "unexpected pickle layout"
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(name, data)
    path.write_bytes(buf.getvalue())
