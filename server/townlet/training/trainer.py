"""The compact DQN trainer: `train(config)` reads top to bottom, cleanrl style.

One loop serves both Hamlet networks: the MLP (`SimpleQNetwork`) learns from single transitions, the
CNN+LSTM (`RecurrentSpatialQNetwork`) from replayed windows of whole episodes. Every ``checkpoint_every``
episodes (and at the end) it writes a Hamlet-layout v2 training checkpoint ``checkpoint_epNNNNN.pt`` and,
beside it, the small inference checkpoint ``model_epNNNNN.pt``, both atomically.

Randomness: the network init comes from ``seed``; every episode draws its env seed, its exploration
generator and its replay-sampling generator from ``SeedSequence([seed, episode])``. Nothing random is
carried between episodes except through saved state (weights, optimiser, replay), so a run resumed from
its checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.env import NUM_AFFORDANCE_TYPES, NUM_METERS, VectorTownletEnv
from townlet.inference.filenames import TRAINING_GLOB, parse_checkpoint_name
from townlet.inference.migration import save_inference_beside
from townlet.inference.policy import epsilon_greedy
from townlet.training.checkpoint_v2 import build_training_checkpoint, save_training_checkpoint
from townlet.training.config import TrainConfig, stage_for_multiplier, training_layout
from townlet.training.dqn import sequence_td_loss, td_loss
from townlet.training.errors import ResumeError, TrainingConfigError
from townlet.training.replay import ReplayBuffer, SequenceReplayBuffer

__all__ = [
    "EpisodeStats",
    "TrainResult",
    "build_q_network",
    "latest_checkpoint",
    "prune_checkpoints",
    "train",
    "training_checkpoints",
]

logger = logging.getLogger(__name__)

# Settings a resumed run may change; every other field must match the checkpoint's.
_RESUMABLE_CHANGES = frozenset({"episodes", "out", "checkpoint_every", "keep_last"})


@dataclass(frozen=True)
class EpisodeStats:
    """What one finished episode (a round of ``num_envs`` env episodes) looked like."""

    episode: int  # episodes done so far (1-based count)
    episodes: int  # the run's target
    mean_survival: float  # env steps survived, averaged over the envs
    max_survival: int
    mean_return: float
    epsilon: float
    loss: float | None  # mean TD loss of this episode's gradient steps (None before learning starts)
    total_steps: int  # batched env steps since the run began
    gradient_steps: int
    wall_seconds: float


@dataclass
class TrainResult:
    """The trained online network and the files written by this call."""

    q_network: nn.Module
    episode: int
    checkpoints: list[Path] = field(default_factory=list)
    models: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)  # training checkpoints deleted by ``keep_last``
    wall_seconds: float = 0.0


def build_q_network(config: TrainConfig) -> nn.Module:
    """The level's Hamlet network, initialised from ``config.seed`` (the global torch RNG is left alone)."""
    level = config.level_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.network_type == "recurrent":
            if not level.partial_observability:
                raise TrainingConfigError(
                    f"the LSTM network needs a partial-observability level (L2, L3), got {level.name}"
                )
            return RecurrentSpatialQNetwork(
                action_dim=6,
                window_size=level.window_size,
                num_meters=NUM_METERS,
                num_affordance_types=NUM_AFFORDANCE_TYPES,
            )
        return SimpleQNetwork(level.obs_dim, 6)


def training_checkpoints(directory: str | Path) -> list[Path]:
    """The ``checkpoint_epNNNNN.pt`` files in ``directory``, oldest (lowest episode) first."""
    found = []
    for path in Path(directory).glob(TRAINING_GLOB):
        parsed = parse_checkpoint_name(path.name)
        if parsed is not None and parsed.is_training:
            found.append((parsed.episode, path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The ``checkpoint_epNNNNN.pt`` with the highest episode number in ``directory`` (None if there is none)."""
    found = training_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` training checkpoints in ``directory`` (``keep_last`` 0: none).

    Only ``checkpoint_epNNNNN.pt`` files are removed; inference checkpoints (``model_epNNNNN.pt``) stay.
    Returns the removed paths, oldest first.
    """
    if keep_last <= 0:
        return []
    stale = training_checkpoints(directory)[:-keep_last]
    for path in stale:
        path.unlink()
        logger.info("removed %s (keep_last=%d)", path, keep_last)
    return stale


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_episode: Callable[[EpisodeStats], None] | None = None,
) -> TrainResult:
    """Train until ``config.episodes`` episodes are done; returns the online network and the files written.

    With ``resume`` the run continues from the latest checkpoint in ``config.out`` (which must have been
    written with the same settings, apart from ``episodes``, ``out``, ``checkpoint_every`` and
    ``keep_last``). Without it, ``config.out`` must not hold checkpoints already. ``on_episode`` is called
    after every episode. With ``keep_last`` > 0 older training checkpoints are deleted after each save.
    """
    level = config.level_config
    recurrent = config.network_type == "recurrent"
    out = Path(config.out)

    # --- networks, optimiser, replay -----------------------------------------------------------------
    q_network = build_q_network(config)
    target_network = copy.deepcopy(q_network)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=config.learning_rate)
    replay: ReplayBuffer | SequenceReplayBuffer = (
        SequenceReplayBuffer(config.buffer_capacity)
        if recurrent
        else ReplayBuffer(config.buffer_capacity, level.obs_dim)
    )
    layout = None if config.relayout else training_layout(level, config.seed)
    episode, total_steps, gradient_steps, wall_before = 0, 0, 0, 0.0
    survival_history: list[int] = []

    if resume:
        restored = _restore(config, q_network, target_network, optimizer, recurrent, level.obs_dim)
        episode, total_steps, gradient_steps, replay, layout, survival_history, wall_before = restored
    elif latest_checkpoint(out) is not None:
        raise ResumeError(f"{out} already holds checkpoints; pass resume=True (CLI: --resume) or choose another out")

    env = VectorTownletEnv(
        level,
        config.num_envs,
        seed=config.seed,
        relayout_each_reset=config.relayout,
        depletion_multiplier=config.depletion_multiplier,
        layout=layout,
    )
    result = TrainResult(q_network, episode)
    started = time.perf_counter()
    logger.info(
        "training %s %s on %s: episodes %d -> %d, %d envs, seed %d",
        config.network_type,
        type(q_network).__name__,
        level.name,
        episode,
        config.episodes,
        config.num_envs,
        config.seed,
    )

    while episode < config.episodes:
        # --- one episode: every env starts together and runs until all are finished -----------------
        env_seed, act_seed, sample_seed = np.random.SeedSequence([config.seed, episode]).generate_state(3)
        act_gen = torch.Generator().manual_seed(int(act_seed))
        sample_gen = torch.Generator().manual_seed(int(sample_seed))
        epsilon = config.epsilon_at(episode)
        obs = env.reset(seed=int(env_seed))
        hidden = q_network.initial_hidden(config.num_envs) if isinstance(q_network, RecurrentSpatialQNetwork) else None
        history: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        returns = np.zeros(config.num_envs)
        losses: list[float] = []
        while True:
            obs_t = torch.from_numpy(obs)
            with torch.no_grad():
                q_values, hidden = q_network(obs_t, hidden)
            actions = epsilon_greedy(q_values, epsilon, torch.from_numpy(env.action_masks()), act_gen)
            next_obs, reward, done, info = env.step(actions.numpy())
            active = info["active"]
            returns += reward
            if recurrent:
                history.append((obs, actions.numpy(), reward, done))
            else:
                rows = torch.from_numpy(active)
                replay.push(  # type: ignore[union-attr]
                    obs_t[rows], actions[rows], torch.from_numpy(reward)[rows], torch.from_numpy(next_obs)[rows],
                    torch.from_numpy(done)[rows],
                )  # fmt: skip
            total_steps += 1
            obs = next_obs

            # --- learn: one gradient step every train_frequency batched env steps -----------------------
            if len(replay) >= config.learning_starts and total_steps % config.train_frequency == 0:
                losses.append(_gradient_step(config, q_network, target_network, optimizer, replay, sample_gen))
                gradient_steps += 1
                if gradient_steps % config.target_update_frequency == 0:
                    target_network.load_state_dict(q_network.state_dict())
            if (done | info["truncated"]).all():
                break

        survived = info["step_counts"].astype(int)
        if recurrent:
            _store_episodes(replay, history, survived)  # type: ignore[arg-type]
        survival_history = (survival_history + survived.tolist())[-100:]
        episode += 1
        wall = wall_before + time.perf_counter() - started
        stats = EpisodeStats(
            episode=episode,
            episodes=config.episodes,
            mean_survival=float(survived.mean()),
            max_survival=int(survived.max()),
            mean_return=float(returns.mean()),
            epsilon=epsilon,
            loss=float(np.mean(losses)) if losses else None,
            total_steps=total_steps,
            gradient_steps=gradient_steps,
            wall_seconds=wall,
        )
        if episode % 10 == 0 or episode == config.episodes:
            logger.info(
                "episode %d/%d: survival %.1f (max %d), return %.1f, epsilon %.3f, loss %s, %d grad steps, %.0f s",
                episode, config.episodes, stats.mean_survival, stats.max_survival, stats.mean_return, epsilon,
                "-" if stats.loss is None else f"{stats.loss:.4f}", gradient_steps, wall,
            )  # fmt: skip
        if on_episode is not None:
            on_episode(stats)

        # --- checkpoints: Hamlet v2 training file, then the inference file beside it --------------------
        if episode % config.checkpoint_every == 0 or episode == config.episodes:
            run = {"total_steps": total_steps, "gradient_steps": gradient_steps, "wall_seconds": wall}
            state = {"replay": replay, "survival_history": survival_history, "layout": env.affordance_positions(0)}
            training_path, model_path = _save(config, episode, q_network, target_network, optimizer, state, run)
            result.checkpoints.append(training_path)
            result.models.append(model_path)
            result.removed += prune_checkpoints(out, config.keep_last)

    result.episode = episode
    result.wall_seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- pieces of the loop


def _gradient_step(
    config: TrainConfig,
    q_network: nn.Module,
    target_network: nn.Module,
    optimizer: torch.optim.Optimizer,
    replay: ReplayBuffer | SequenceReplayBuffer,
    generator: torch.Generator,
) -> float:
    """Sample a batch, take one Adam step on the TD loss (gradient norm clipped); returns the loss."""
    if isinstance(replay, SequenceReplayBuffer):
        batch = replay.sample(config.batch_size, config.sequence_length, generator)
        loss = sequence_td_loss(q_network, target_network, batch, config.gamma, config.loss)
    else:
        loss = td_loss(
            q_network, target_network, replay.sample(config.batch_size, generator), config.gamma, config.loss
        )
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    nn.utils.clip_grad_norm_(q_network.parameters(), config.max_grad_norm)
    optimizer.step()
    return float(loss.item())


def _store_episodes(
    replay: SequenceReplayBuffer,
    history: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    survived: np.ndarray,
) -> None:
    """Split the ``[T, N, ...]`` step history of one round into each env's episode and store them in env order."""
    obs = torch.from_numpy(np.stack([h[0] for h in history]))
    actions = torch.from_numpy(np.stack([h[1] for h in history]))
    rewards = torch.from_numpy(np.stack([h[2] for h in history]))
    dones = torch.from_numpy(np.stack([h[3] for h in history]))
    for env_index, length in enumerate(survived.tolist()):
        replay.push_episode(
            obs[:length, env_index], actions[:length, env_index], rewards[:length, env_index], dones[:length, env_index]
        )


def _hamlet_training_config(config: TrainConfig, run: dict[str, Any]) -> dict[str, Any]:
    """Hamlet's parsed ``training.yaml`` sections for this run, plus the full `TrainConfig` to resume from."""
    level = config.level_config
    return {
        "environment": {
            "grid_size": level.grid_size,
            "partial_observability": level.partial_observability,
            "vision_range": level.vision_range,
            "enabled_affordances": list(level.enabled_affordances),
            "energy_move_depletion": level.move_energy_cost,
            "energy_wait_depletion": level.wait_energy_cost,
            "energy_interact_depletion": level.interact_energy_cost,
            "enable_temporal_mechanics": level.temporal_mechanics,
        },
        "population": {
            "num_agents": config.num_envs,
            "learning_rate": config.learning_rate,
            "gamma": config.gamma,
            "replay_buffer_capacity": config.buffer_capacity,
            "network_type": config.network_type,
        },
        "curriculum": {"max_steps_per_episode": level.max_steps_per_episode},
        "exploration": {
            "embed_dim": 128,
            "initial_intrinsic_weight": 0.0,
            "variance_threshold": 100,
            "survival_window": 100,
        },
        "training": {
            "device": "cpu",
            "max_episodes": config.episodes,
            "train_frequency": config.train_frequency,
            "target_update_frequency": config.target_update_frequency,
            "batch_size": config.batch_size,
            "sequence_length": config.sequence_length,
            "max_grad_norm": config.max_grad_norm,
            "epsilon_start": config.epsilon_start,
            "epsilon_decay": config.epsilon_decay,
            "epsilon_min": config.epsilon_min,
        },
        "townlet_trainer": config.to_dict(),
        "townlet_trainer_run": dict(run),
    }


def _save(
    config: TrainConfig,
    episode: int,
    q_network: nn.Module,
    target_network: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    run: dict[str, Any],
) -> tuple[Path, Path]:
    level = config.level_config
    stage = stage_for_multiplier(config.depletion_multiplier)
    next_epsilon = config.epsilon_at(episode)
    config_dir = f"configs/{level.pack}"
    checkpoint = build_training_checkpoint(
        q_network,
        episode=episode,
        epsilon=next_epsilon,
        training_config=_hamlet_training_config(config, run),
        config_dir=config_dir,
        target_network=target_network,
        optimizer=optimizer,
        replay_buffer=state["replay"].state_dict(),
        total_steps=run["total_steps"],
        training_step_counter=run["gradient_steps"],
        agent_stages=[stage] * config.num_envs,
        affordance_positions=state["layout"],
        survival_history=state["survival_history"],
        intrinsic_weight=0.0,
    )
    training_path = save_training_checkpoint(checkpoint, config.out)
    recent = state["survival_history"]
    model_path = save_inference_beside(
        training_path,
        q_network,
        episode=episode,
        epsilon=next_epsilon,
        curriculum_stage=stage,
        config_dir=config_dir,
        extra_metadata={
            "trainer": "townlet.training",
            "level": level.name,
            "seed": config.seed,
            "depletion_multiplier": config.depletion_multiplier,
            "relayout": config.relayout,
            "affordance_layout": None if config.relayout else {k: list(v) for k, v in state["layout"].items()},
            "total_env_steps": run["total_steps"] * config.num_envs,
            "gradient_steps": run["gradient_steps"],
            "training_wall_seconds": round(run["wall_seconds"], 1),
            "recent_mean_survival": float(np.mean(recent)) if recent else None,
        },
    )
    logger.info("episode %d: wrote %s and %s", episode, training_path.name, model_path.name)
    return training_path, model_path


def _restore(
    config: TrainConfig,
    q_network: nn.Module,
    target_network: nn.Module,
    optimizer: torch.optim.Optimizer,
    recurrent: bool,
    obs_dim: int,
) -> tuple[int, int, int, ReplayBuffer | SequenceReplayBuffer, dict[str, Any] | None, list[int], float]:
    """Load the latest checkpoint of ``config.out`` into the given objects; returns the loop's counters."""
    path = latest_checkpoint(config.out)
    if path is None:
        raise ResumeError(f"nothing to resume: {config.out} holds no checkpoint_epNNNNN.pt")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    saved = checkpoint.get("training_config", {}).get("townlet_trainer")
    if not isinstance(saved, dict):
        raise ResumeError(f"{path} was not written by townlet.training (no training_config.townlet_trainer)")
    current = config.to_dict()
    differ = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
    if differ:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current[k]!r}" for k in differ)
        raise ResumeError(f"{path} was written with different settings ({detail}); resume with the same ones")
    population = checkpoint["population_state"]
    q_network.load_state_dict(population["q_network"])
    target_network.load_state_dict(population["target_network"])
    optimizer.load_state_dict(population["optimizer"])
    replay_state = population["replay_buffer"]
    replay: ReplayBuffer | SequenceReplayBuffer = (
        SequenceReplayBuffer.from_state_dict(replay_state)
        if recurrent
        else ReplayBuffer.from_state_dict(replay_state, obs_dim)
    )
    positions = checkpoint["affordance_layout"]["positions"]
    layout = None if config.relayout else {k: tuple(v) for k, v in positions.items()}
    history = [int(s) for s in population["exploration_state"]["survival_history"]]
    run = checkpoint["training_config"].get("townlet_trainer_run", {})
    logger.info("resuming from %s (episode %d)", path, checkpoint["episode"])
    return (
        int(checkpoint["episode"]),
        int(population["total_steps"]),
        int(population["training_step_counter"]),
        replay,
        layout,
        history,
        float(run.get("wall_seconds", 0.0)),
    )
