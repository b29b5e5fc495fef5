"""Replay memories, saved and restored in Hamlet's v2 checkpoint layout (reference section 4).

- `ReplayBuffer`: a circular buffer of single transitions for the MLP, sampled uniformly.
- `SequenceReplayBuffer`: whole episodes for the LSTM, sampled as fixed-length windows.

Both store an intrinsic reward (the RND error, `townlet.training.rnd`) next to each extrinsic one, zeros when
RND is off, and may store a shaping reward (the trainer's affordance bonus) beside them. ``sample`` hands back
``extrinsic + shaping + intrinsic_weight * intrinsic`` as the reward (just the extrinsic reward while there is
no shaping and the weight is 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ReplayBuffer", "SequenceBatch", "SequenceReplayBuffer", "TransitionBatch"]


@dataclass(frozen=True)
class TransitionBatch:
    """``obs [B, D]``, ``actions [B]`` int64, ``rewards [B]``, ``next_obs [B, D]``, ``dones [B]`` bool."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    dones: Tensor


@dataclass(frozen=True)
class SequenceBatch:
    """``B`` windows of ``S`` steps: ``obs [B, S+1, D]`` (the extra one is the last step's next observation),
    ``actions/rewards/dones [B, S]``, ``valid [B, S]`` bool (the step exists and has a TD target: it ended
    the episode or its next observation is stored) and ``present [B, S]`` bool (the step exists).

    With burn-in the first ``burn_in`` steps precede the sampled step (padding, ``present`` False, where the
    episode starts later) and ``hidden`` holds the LSTM state ``([B, H], [B, H])`` stored when the window's
    first present step was acted on; without it ``hidden`` is None (windows start from zeros).
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    dones: Tensor
    valid: Tensor
    present: Tensor
    burn_in: int = 0
    hidden: tuple[Tensor, Tensor] | None = None


class ReplayBuffer:
    """Uniform replay of transitions; storage is allocated at full capacity up front, as in Hamlet."""

    def __init__(self, capacity: int, obs_dim: int) -> None:
        self.capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self._obs = torch.zeros(self.capacity, self.obs_dim)
        self._next_obs = torch.zeros(self.capacity, self.obs_dim)
        self._actions = torch.zeros(self.capacity, dtype=torch.int64)
        self._rewards = torch.zeros(self.capacity)
        self._intrinsic = torch.zeros(self.capacity)
        self._shaping: Tensor | None = None  # allocated by the first push that carries shaping
        self._dones = torch.zeros(self.capacity, dtype=torch.bool)
        self._size = 0
        self._position = 0

    def __len__(self) -> int:
        return self._size

    def push(
        self,
        obs: Tensor,
        actions: Tensor,
        rewards: Tensor,
        next_obs: Tensor,
        dones: Tensor,
        intrinsic: Tensor | None = None,
        shaping: Tensor | None = None,
    ) -> None:
        """Append ``B`` transitions (``obs [B, D]`` ..., ``intrinsic [B]`` and ``shaping [B]`` or None for
        zeros), overwriting the oldest once full."""
        count = obs.shape[0]
        index = (self._position + torch.arange(count)) % self.capacity
        self._obs[index] = obs
        self._next_obs[index] = next_obs
        self._actions[index] = actions.to(torch.int64)
        self._rewards[index] = rewards.to(torch.float32)
        self._intrinsic[index] = 0.0 if intrinsic is None else intrinsic.to(torch.float32)
        if shaping is not None and self._shaping is None:
            self._shaping = torch.zeros(self.capacity)
        if self._shaping is not None:
            self._shaping[index] = 0.0 if shaping is None else shaping.to(torch.float32)
        self._dones[index] = dones.to(torch.bool)
        self._position = int((self._position + count) % self.capacity)
        self._size = min(self._size + count, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator, *, intrinsic_weight: float = 0.0) -> TransitionBatch:
        """``batch_size`` transitions drawn uniformly with replacement; reward
        ``extrinsic + shaping + weight * intrinsic``."""
        if self._size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(self._size, (batch_size,), generator=generator)
        rewards = self._rewards[index]
        if self._shaping is not None:
            rewards = rewards + self._shaping[index]
        if intrinsic_weight:
            rewards = rewards + intrinsic_weight * self._intrinsic[index]
        return TransitionBatch(
            self._obs[index], self._actions[index], rewards, self._next_obs[index], self._dones[index]
        )

    def state_dict(self) -> dict[str, Any]:
        """Hamlet's simple-network ``replay_buffer`` dict (tensors at full capacity; None while empty)."""
        empty = self._size == 0
        return {
            "size": self._size,
            "position": self._position,
            "capacity": self.capacity,
            "observations": None if empty else self._obs.clone(),
            "actions": None if empty else self._actions.clone(),
            "rewards_extrinsic": None if empty else self._rewards.clone(),
            "rewards_intrinsic": None if empty else self._intrinsic.clone(),
            "next_observations": None if empty else self._next_obs.clone(),
            "dones": None if empty else self._dones.clone(),
            **({} if self._shaping is None or empty else {"rewards_shaping": self._shaping.clone()}),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], obs_dim: int) -> ReplayBuffer:
        buffer = cls(int(state["capacity"]), obs_dim)
        if state["observations"] is not None:
            buffer._obs.copy_(state["observations"])
            buffer._next_obs.copy_(state["next_observations"])
            buffer._actions.copy_(state["actions"])
            buffer._rewards.copy_(state["rewards_extrinsic"])
            buffer._intrinsic.copy_(state["rewards_intrinsic"])
            if state.get("rewards_shaping") is not None:  # absent when the run stored no shaping
                buffer._shaping = state["rewards_shaping"].clone()
            buffer._dones.copy_(state["dones"])
        buffer._size = int(state["size"])
        buffer._position = int(state["position"])
        return buffer


class SequenceReplayBuffer:
    """Whole episodes for recurrent training; ``capacity`` counts transitions, oldest episodes go first.

    An episode whose last step is not ``done`` ended by truncation: its final transition has no next
    observation stored (Hamlet's layout keeps none), so it gets no TD target. Episodes may carry the LSTM
    state the acting network held before each step (``hidden_h``, ``hidden_c``, R2D2's stored state), which
    `sample` hands back for burn-in.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._episodes: list[dict[str, Tensor]] = []
        self._num_transitions = 0

    def __len__(self) -> int:
        return self._num_transitions

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def push_episode(
        self,
        obs: Tensor,
        actions: Tensor,
        rewards: Tensor,
        dones: Tensor,
        hidden: tuple[Tensor, Tensor] | None = None,
        intrinsic: Tensor | None = None,
        shaping: Tensor | None = None,
    ) -> None:
        """Store one episode: ``obs [T, D]``, ``actions [T]``, ``rewards [T]``, ``dones [T]`` (T >= 1), and
        optionally ``hidden = (h [T, H], c [T, H])``, the LSTM state before acting at each step,
        ``intrinsic [T]``, the RND error of each step (None: zeros), and ``shaping [T]``, a reward the learner
        adds to the extrinsic one (None: none stored, key ``rewards_shaping`` absent)."""
        length = obs.shape[0]
        if length == 0:
            return
        episode = {
            "observations": obs.to(torch.float32).clone(),
            "actions": actions.to(torch.int64).clone(),
            "rewards_extrinsic": rewards.to(torch.float32).clone(),
            "rewards_intrinsic": torch.zeros(length) if intrinsic is None else intrinsic.to(torch.float32).clone(),
            "dones": dones.to(torch.bool).clone(),
        }
        if shaping is not None:
            episode["rewards_shaping"] = shaping.to(torch.float32).clone()
        if hidden is not None:
            if hidden[0].shape[0] != length or hidden[1].shape != hidden[0].shape:
                raise ValueError(
                    f"hidden must be two [T, H] tensors with T = {length} steps, got shapes "
                    f"{tuple(hidden[0].shape)} and {tuple(hidden[1].shape)}"
                )
            episode["hidden_h"] = hidden[0].to(torch.float32).clone()
            episode["hidden_c"] = hidden[1].to(torch.float32).clone()
        self._episodes.append(episode)
        self._num_transitions += length
        while self._num_transitions > self.capacity and len(self._episodes) > 1:
            self._num_transitions -= self._episodes.pop(0)["actions"].shape[0]

    def sample(
        self,
        batch_size: int,
        sequence_length: int,
        generator: torch.Generator,
        *,
        burn_in: int = 0,
        n_step: int = 1,
        intrinsic_weight: float = 0.0,
    ) -> SequenceBatch:
        """``batch_size`` windows whose first trained step is drawn uniformly over all stored transitions.

        Each window holds ``burn_in`` steps before that step, the ``sequence_length`` trained steps and the
        ``n_step - 1`` steps after them that their n-step returns read. Steps outside the episode are
        zero-padded and marked absent. With ``burn_in`` > 0 every episode must carry its stored LSTM state.
        Rewards are ``extrinsic + shaping + intrinsic_weight * intrinsic``.
        """
        if self._num_transitions == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        lengths = torch.tensor([e["actions"].shape[0] for e in self._episodes])
        ends = lengths.cumsum(0)
        picks = torch.randint(self._num_transitions, (batch_size,), generator=generator)
        which = torch.searchsorted(ends, picks, right=True)
        starts = picks - (ends[which] - lengths[which])
        obs_dim = self._episodes[0]["observations"].shape[1]
        span = burn_in + sequence_length + n_step - 1  # steps per window
        obs = torch.zeros(batch_size, span + 1, obs_dim)
        actions = torch.zeros(batch_size, span, dtype=torch.int64)
        rewards = torch.zeros(batch_size, span)
        dones = torch.zeros(batch_size, span, dtype=torch.bool)
        valid = torch.zeros(batch_size, span, dtype=torch.bool)
        first_steps = []
        for row, (episode_index, start) in enumerate(zip(which.tolist(), starts.tolist(), strict=True)):
            episode = self._episodes[episode_index]
            size = episode["actions"].shape[0]
            first = max(0, start - burn_in)  # the window's first present step
            offset = first - (start - burn_in)  # padded steps in front of it
            steps = min(span - offset, size - first)
            obs[row, offset : offset + min(span + 1 - offset, size - first)] = episode["observations"][
                first : first + span + 1 - offset
            ]
            actions[row, offset : offset + steps] = episode["actions"][first : first + steps]
            rewards[row, offset : offset + steps] = episode["rewards_extrinsic"][first : first + steps]
            if "rewards_shaping" in episode:
                rewards[row, offset : offset + steps] += episode["rewards_shaping"][first : first + steps]
            if intrinsic_weight:
                bonus = episode["rewards_intrinsic"][first : first + steps]
                rewards[row, offset : offset + steps] += intrinsic_weight * bonus
            dones[row, offset : offset + steps] = episode["dones"][first : first + steps]
            valid[row, offset : offset + steps] = True
            if first + steps == size and not bool(episode["dones"][-1]):
                valid[row, offset + steps - 1] = False  # truncated: the final next observation was never stored
            first_steps.append((episode_index, first))
        present = _present_mask(batch_size, span, burn_in, starts, lengths[which])
        hidden = self._stored_hidden(first_steps) if burn_in > 0 else None
        return SequenceBatch(obs, actions, rewards, dones, valid, present, burn_in, hidden)

    def _stored_hidden(self, first_steps: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """The stored LSTM state ``([B, H], [B, H])`` before each ``(episode, step)``."""
        missing = [i for i, _ in first_steps if "hidden_h" not in self._episodes[i]]
        if missing:
            raise RuntimeError(
                "burn-in needs the LSTM state stored with each episode, but some episodes were pushed without "
                "hidden=; store it when acting (TrainConfig.burn_in > 0 does)"
            )
        h = torch.stack([self._episodes[i]["hidden_h"][t] for i, t in first_steps])
        c = torch.stack([self._episodes[i]["hidden_c"][t] for i, t in first_steps])
        return h, c

    def state_dict(self) -> dict[str, Any]:
        """Hamlet's recurrent ``replay_buffer`` dict (plus ``hidden_h``/``hidden_c`` and ``rewards_shaping`` per
        episode if stored)."""
        return {
            "num_transitions": self._num_transitions,
            "capacity": self.capacity,
            "episodes": [{k: v.clone() for k, v in e.items()} for e in self._episodes],
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> SequenceReplayBuffer:
        buffer = cls(int(state["capacity"]))
        buffer._episodes = [{k: v.clone() for k, v in e.items()} for e in state["episodes"]]
        buffer._num_transitions = int(state["num_transitions"])
        return buffer


def _present_mask(batch_size: int, span: int, burn_in: int, starts: Tensor, lengths: Tensor) -> Tensor:
    """``[B, span]`` bool: window position ``j`` is episode step ``start - burn_in + j``, inside ``[0, length)``."""
    step = starts[:, None] - burn_in + torch.arange(span)[None, :]
    return (step >= 0) & (step < lengths[:, None])
