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
from townlet.training.rnd import RNDExploration, decayed_weight

__all__ = [
    "EpisodeStats",
    "RunState",
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
    intrinsic_weight: float = 0.0  # the RND weight after this episode (0: RND off)
    mean_intrinsic: float | None = None  # mean RND error of the steps taken (None: RND off)


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


@dataclass
class RunState:
    """What a run carries from one episode to the next, and what a training checkpoint saves and restores.

    `_run_episode` advances it (the networks learn, the counters count); nothing else changes it.
    """

    q_network: nn.Module
    target_network: nn.Module
    optimizer: torch.optim.Optimizer
    replay: ReplayBuffer | SequenceReplayBuffer
    layout: dict[str, tuple[int, int]] | None  # the fixed affordance layout (None: a new one every reset)
    episode: int = 0  # episodes done
    total_steps: int = 0  # batched env steps
    gradient_steps: int = 0
    survival_history: list[int] = field(default_factory=list)  # the last 100 env episodes' survival
    wall_before: float = 0.0  # training seconds spent before this process (resumed runs)
    rnd: RNDExploration | None = None  # the novelty bonus (None: rnd_weight 0)
    intrinsic_weight: float = 0.0  # its current weight in the TD targets


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
    if resume:
        state = _restore(config)
    elif latest_checkpoint(config.out) is not None:
        raise ResumeError(
            f"{Path(config.out)} already holds checkpoints; pass resume=True (CLI: --resume) or choose another out"
        )
    else:
        state = _fresh_state(config)
    env = VectorTownletEnv(
        config.level_config,
        config.num_envs,
        seed=config.seed,
        relayout_each_reset=config.relayout,
        depletion_multiplier=config.depletion_multiplier,
        layout=state.layout,
    )
    result = TrainResult(state.q_network, state.episode)
    started = time.perf_counter()
    logger.info("training %s %s on %s: episodes %d -> %d, %d envs, seed %d", config.network_type,
                type(state.q_network).__name__, config.level_config.name, state.episode, config.episodes,
                config.num_envs, config.seed)  # fmt: skip
    while state.episode < config.episodes:
        stats = _run_episode(config, state, env, started)
        _log_episode(stats)
        if on_episode is not None:
            on_episode(stats)
        if state.episode % config.checkpoint_every == 0 or state.episode == config.episodes:
            training_path, model_path = _save(config, state, env.affordance_positions(0), stats.wall_seconds)
            result.checkpoints.append(training_path)
            result.models.append(model_path)
            result.removed += prune_checkpoints(config.out, config.keep_last)
    result.episode = state.episode
    result.wall_seconds = time.perf_counter() - started
    return result


def _fresh_state(config: TrainConfig) -> RunState:
    """Episode 0: the seeded network, its target copy, a new optimiser and an empty replay buffer."""
    level = config.level_config
    q_network = build_q_network(config)
    replay: ReplayBuffer | SequenceReplayBuffer = (
        SequenceReplayBuffer(config.buffer_capacity)
        if config.network_type == "recurrent"
        else ReplayBuffer(config.buffer_capacity, level.obs_dim)
    )
    return RunState(
        q_network=q_network,
        target_network=copy.deepcopy(q_network),
        optimizer=torch.optim.Adam(q_network.parameters(), lr=config.learning_rate),
        replay=replay,
        layout=None if config.relayout else training_layout(level, config.seed),
        rnd=RNDExploration(level.obs_dim, seed=config.seed) if config.rnd_weight > 0 else None,
        intrinsic_weight=config.rnd_weight,
    )


def _run_episode(config: TrainConfig, state: RunState, env: VectorTownletEnv, started: float) -> EpisodeStats:
    """One episode (every env starts together and runs until all are finished), learning as it goes.

    Its env seed, exploration and replay-sampling generators come from ``SeedSequence([seed, episode])``.
    Advances ``state``; ``started`` is when this process began training (for the wall clock).
    """
    recurrent = config.network_type == "recurrent"
    q_network = state.q_network
    env_seed, act_seed, sample_seed = np.random.SeedSequence([config.seed, state.episode]).generate_state(3)
    act_gen = torch.Generator().manual_seed(int(act_seed))
    sample_gen = torch.Generator().manual_seed(int(sample_seed))
    epsilon = config.epsilon_at(state.episode)
    obs = env.reset(seed=int(env_seed))
    hidden = q_network.initial_hidden(config.num_envs) if isinstance(q_network, RecurrentSpatialQNetwork) else None
    history: list[tuple[np.ndarray, ...]] = []  # per step: obs, actions, rewards, dones[, h, c before acting]
    intrinsic_history: list[np.ndarray] = []  # per step: RND error of obs [N] (RND on only)
    shaping_history: list[np.ndarray] = []  # per step: affordance bonus [N] (bonus on only)
    store_hidden = recurrent and config.burn_in > 0
    used = np.zeros((config.num_envs, NUM_AFFORDANCE_TYPES), dtype=bool)  # affordance types used per env episode
    returns = np.zeros(config.num_envs)
    losses: list[float] = []
    while True:
        obs_t = torch.from_numpy(obs)
        acted_from = hidden
        with torch.no_grad():
            q_values, hidden = q_network(obs_t, hidden)
        actions = epsilon_greedy(q_values, epsilon, torch.from_numpy(env.action_masks()), act_gen)
        next_obs, reward, done, info = env.step(actions.numpy())
        active = info["active"]
        returns += reward
        shaping = None
        if config.affordance_bonus:
            shaping = _first_use_bonus(config.affordance_bonus, used, info["successful_interactions"])
            shaping_history.append(shaping)
        intrinsic = None
        if state.rnd is not None:  # novelty of the pre-step observation; the predictor then learns from it
            intrinsic = state.rnd.intrinsic_reward(obs_t)
            intrinsic_history.append(intrinsic.numpy())
            state.rnd.observe(obs_t[torch.from_numpy(active)])
        if store_hidden and acted_from is not None:
            history.append((obs, actions.numpy(), reward, done, acted_from[0][0].numpy(), acted_from[1][0].numpy()))
        elif recurrent:
            history.append((obs, actions.numpy(), reward, done))
        else:
            rows = torch.from_numpy(active)
            state.replay.push(  # type: ignore[union-attr]
                obs_t[rows], actions[rows], torch.from_numpy(reward)[rows], torch.from_numpy(next_obs)[rows],
                torch.from_numpy(done)[rows], None if intrinsic is None else intrinsic[rows],
                None if shaping is None else torch.from_numpy(shaping)[rows],
            )  # fmt: skip
        state.total_steps += 1
        obs = next_obs

        # --- learn: one gradient step every train_frequency batched env steps ---------------------------
        if len(state.replay) >= config.learning_starts and state.total_steps % config.train_frequency == 0:
            losses.append(_gradient_step(config, state, sample_gen))
            state.gradient_steps += 1
            if state.gradient_steps % config.target_update_frequency == 0:
                state.target_network.load_state_dict(q_network.state_dict())
        if (done | info["truncated"]).all():
            break

    survived = info["step_counts"].astype(int)
    if recurrent:
        _store_episodes(state.replay, history, survived, intrinsic_history, shaping_history)  # type: ignore[arg-type]
    for steps in survived.tolist():  # Hamlet's adaptive weight steps once per agent episode
        state.survival_history.append(steps)
        del state.survival_history[:-100]
        if state.rnd is not None:
            state.intrinsic_weight = decayed_weight(state.intrinsic_weight, state.survival_history)
    mean_intrinsic = _mean_intrinsic(intrinsic_history, survived) if state.rnd is not None else None
    state.episode += 1
    return EpisodeStats(
        episode=state.episode,
        episodes=config.episodes,
        mean_survival=float(survived.mean()),
        max_survival=int(survived.max()),
        mean_return=float(returns.mean()),
        epsilon=epsilon,
        loss=float(np.mean(losses)) if losses else None,
        total_steps=state.total_steps,
        gradient_steps=state.gradient_steps,
        wall_seconds=state.wall_before + time.perf_counter() - started,
        intrinsic_weight=state.intrinsic_weight,  # 0 while RND is off
        mean_intrinsic=mean_intrinsic,
    )


def _first_use_bonus(bonus: float, used: np.ndarray, interactions: np.ndarray) -> np.ndarray:
    """``bonus`` for each env whose successful INTERACT (``interactions [N]``, affordance index or -1) is its
    first use of that affordance type this env episode, else 0 (float32 ``[N]``); marks the use in ``used``."""
    shaping = np.zeros(len(interactions), dtype=np.float32)
    if bonus:
        rows = np.flatnonzero(interactions >= 0)
        first = rows[~used[rows, interactions[rows]]]
        used[first, interactions[first]] = True
        shaping[first] = bonus
    return shaping


def _mean_intrinsic(intrinsic_history: list[np.ndarray], survived: np.ndarray) -> float:
    """Mean RND error over the steps each env actually took (``[T, N]`` history, env ``i`` lived ``survived[i]``)."""
    errors = np.stack(intrinsic_history)
    taken = np.arange(errors.shape[0])[:, None] < survived[None, :]
    return float(errors[taken].mean())


def _log_episode(stats: EpisodeStats) -> None:
    if stats.episode % 10 == 0 or stats.episode == stats.episodes:
        logger.info(
            "episode %d/%d: survival %.1f (max %d), return %.1f, epsilon %.3f, loss %s, %d grad steps, %.0f s",
            stats.episode, stats.episodes, stats.mean_survival, stats.max_survival, stats.mean_return,
            stats.epsilon, "-" if stats.loss is None else f"{stats.loss:.4f}", stats.gradient_steps,
            stats.wall_seconds,
        )  # fmt: skip
        if stats.mean_intrinsic is not None:
            logger.info("  RND: mean error %.4f, weight %.4f", stats.mean_intrinsic, stats.intrinsic_weight)


# --------------------------------------------------------------------------- pieces of the loop


def _gradient_step(config: TrainConfig, state: RunState, generator: torch.Generator) -> float:
    """Sample a batch, take one Adam step on the TD loss (gradient norm clipped); returns the loss."""
    q_network, target_network, optimizer, replay = state.q_network, state.target_network, state.optimizer, state.replay
    if isinstance(replay, SequenceReplayBuffer):
        batch = replay.sample(
            config.batch_size, config.sequence_length, generator, burn_in=config.burn_in, n_step=config.n_step,
            intrinsic_weight=state.intrinsic_weight,
        )  # fmt: skip
        loss = sequence_td_loss(
            q_network, target_network, batch, config.gamma, config.loss, n_step=config.n_step, double=config.double_dqn
        )
    else:
        batch_t = replay.sample(config.batch_size, generator, intrinsic_weight=state.intrinsic_weight)
        loss = td_loss(q_network, target_network, batch_t, config.gamma, config.loss, double=config.double_dqn)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    nn.utils.clip_grad_norm_(q_network.parameters(), config.max_grad_norm)
    optimizer.step()
    return float(loss.item())


def _store_episodes(
    replay: SequenceReplayBuffer,
    history: list[tuple[np.ndarray, ...]],
    survived: np.ndarray,
    intrinsic_history: list[np.ndarray],
    shaping_history: list[np.ndarray],
) -> None:
    """Split the ``[T, N, ...]`` step history of one round into each env's episode and store them in env order
    (with the LSTM state before each step when the history carries it, and the RND errors and affordance
    bonuses when there are any)."""
    columns = [torch.from_numpy(np.stack(column)) for column in zip(*history, strict=True)]
    obs, actions, rewards, dones = columns[:4]
    intrinsic = torch.from_numpy(np.stack(intrinsic_history)) if intrinsic_history else None
    shaping = torch.from_numpy(np.stack(shaping_history)) if shaping_history else None
    for env_index, length in enumerate(survived.tolist()):
        hidden = None
        if len(columns) == 6:
            hidden = (columns[4][:length, env_index], columns[5][:length, env_index])
        rows = (slice(None, length), env_index)
        novelty = None if intrinsic is None else intrinsic[rows]
        first_uses = None if shaping is None else shaping[rows]
        replay.push_episode(obs[rows], actions[rows], rewards[rows], dones[rows], hidden, novelty, first_uses)


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
            "initial_intrinsic_weight": config.rnd_weight,
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
    config: TrainConfig, state: RunState, layout: dict[str, tuple[int, int]], wall_seconds: float
) -> tuple[Path, Path]:
    """The Hamlet v2 training checkpoint of ``state``, then the inference checkpoint beside it."""
    level = config.level_config
    run = {"total_steps": state.total_steps, "gradient_steps": state.gradient_steps, "wall_seconds": wall_seconds}
    stage = stage_for_multiplier(config.depletion_multiplier)
    next_epsilon = config.epsilon_at(state.episode)
    config_dir = f"configs/{level.pack}"
    checkpoint = build_training_checkpoint(
        state.q_network,
        episode=state.episode,
        epsilon=next_epsilon,
        training_config=_hamlet_training_config(config, run),
        config_dir=config_dir,
        target_network=state.target_network,
        optimizer=state.optimizer,
        replay_buffer=state.replay.state_dict(),
        total_steps=state.total_steps,
        training_step_counter=state.gradient_steps,
        agent_stages=[stage] * config.num_envs,
        affordance_positions=layout,
        survival_history=state.survival_history,
        intrinsic_weight=state.intrinsic_weight,  # 0 while RND is off
        rnd={**state.rnd.state_dict(), "epsilon": next_epsilon} if state.rnd is not None else None,
    )
    training_path = save_training_checkpoint(checkpoint, config.out)
    recent = state.survival_history
    model_path = save_inference_beside(
        training_path,
        state.q_network,
        episode=state.episode,
        epsilon=next_epsilon,
        curriculum_stage=stage,
        config_dir=config_dir,
        extra_metadata={
            "trainer": "townlet.training",
            "level": level.name,
            "seed": config.seed,
            "depletion_multiplier": config.depletion_multiplier,
            "relayout": config.relayout,
            "affordance_layout": None if config.relayout else {k: list(v) for k, v in layout.items()},
            "total_env_steps": state.total_steps * config.num_envs,
            "gradient_steps": state.gradient_steps,
            "training_wall_seconds": round(wall_seconds, 1),
            "recent_mean_survival": float(np.mean(recent)) if recent else None,
            **({"rnd_weight": config.rnd_weight} if state.rnd is not None else {}),
        },
    )
    logger.info("episode %d: wrote %s and %s", state.episode, training_path.name, model_path.name)
    return training_path, model_path


def _restore(config: TrainConfig) -> RunState:
    """The `RunState` saved in the latest checkpoint of ``config.out``, after checking that it was written by
    this trainer with the same settings (apart from `_RESUMABLE_CHANGES`)."""
    path = latest_checkpoint(config.out)
    if path is None:
        raise ResumeError(f"nothing to resume: {config.out} holds no checkpoint_epNNNNN.pt")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    training_config = checkpoint.get("training_config", {})
    saved = training_config.get("townlet_trainer")
    if not isinstance(saved, dict):
        raise ResumeError(f"{path} was not written by townlet.training (no training_config.townlet_trainer)")
    current = config.to_dict()
    saved = {**TrainConfig().to_dict(), **saved}  # runs saved before a setting existed had its default
    differ = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
    if differ:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {current[k]!r}" for k in differ)
        raise ResumeError(f"{path} was written with different settings ({detail}); resume with the same ones")
    state = _fresh_state(config)
    population = checkpoint["population_state"]
    state.q_network.load_state_dict(population["q_network"])
    state.target_network.load_state_dict(population["target_network"])
    state.optimizer.load_state_dict(population["optimizer"])
    replay_state = population["replay_buffer"]
    if isinstance(state.replay, SequenceReplayBuffer):
        state.replay = SequenceReplayBuffer.from_state_dict(replay_state)
    else:
        state.replay = ReplayBuffer.from_state_dict(replay_state, config.level_config.obs_dim)
    positions = checkpoint["affordance_layout"]["positions"]
    state.layout = None if config.relayout else {k: (int(v[0]), int(v[1])) for k, v in positions.items()}
    state.episode = int(checkpoint["episode"])
    state.total_steps = int(population["total_steps"])
    state.gradient_steps = int(population["training_step_counter"])
    exploration = population["exploration_state"]
    state.survival_history = [int(s) for s in exploration["survival_history"]]
    if state.rnd is not None:
        state.rnd.load_state_dict(exploration["rnd_state"])
        state.intrinsic_weight = float(exploration["current_intrinsic_weight"])
    state.wall_before = float(training_config.get("townlet_trainer_run", {}).get("wall_seconds", 0.0))
    logger.info("resuming from %s (episode %d)", path, state.episode)
    return state
