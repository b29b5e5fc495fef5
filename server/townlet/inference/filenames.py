"""Checkpoint file names: the one rule that writes and reads ``model_epNNNNN.pt`` and ``checkpoint_epNNNNN.pt``.

Hamlet's trainer names a training checkpoint ``checkpoint_ep{episode:05d}.pt``; the inference checkpoint made
from it is ``model_ep{episode:05d}.pt``. Readers accept any number of digits (``model_ep7.pt`` is episode 7)
and any stem before ``_ep`` (a single-file model ``mlp_ep00007.pt`` in a model repository is ``mlp``, episode
7). Hidden and temporary files (``.model_ep00001.pt.<random>.tmp``, written by `atomic_write`) never parse.

The trainer, the migration, the model repository of the server and the tests all go through this module.
Pure functions, no torch.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

__all__ = [
    "INFERENCE_GLOB",
    "INFERENCE_STEM",
    "TRAINING_GLOB",
    "TRAINING_STEM",
    "CheckpointName",
    "inference_checkpoint_name",
    "parse_checkpoint_name",
    "training_checkpoint_name",
]

INFERENCE_STEM = "model"
TRAINING_STEM = "checkpoint"
INFERENCE_GLOB = f"{INFERENCE_STEM}_ep*.pt"
TRAINING_GLOB = f"{TRAINING_STEM}_ep*.pt"

_NAME = re.compile(r"^(?P<stem>[^.].*?)_ep(?P<episode>\d+)\.pt$")


@dataclass(frozen=True)
class CheckpointName:
    """A parsed ``<stem>_ep<episode>.pt`` file name."""

    stem: str  # "model", "checkpoint", or a single-file model's name
    episode: int

    @property
    def is_inference(self) -> bool:
        """``model_ep*.pt``: an inference checkpoint (inference_v1)."""
        return self.stem == INFERENCE_STEM

    @property
    def is_training(self) -> bool:
        """``checkpoint_ep*.pt``: a Hamlet training checkpoint (v2)."""
        return self.stem == TRAINING_STEM


def _checked(episode: int) -> int:
    if isinstance(episode, bool) or not isinstance(episode, numbers.Integral) or episode < 0:
        raise ValueError(f"a checkpoint's episode must be an integer >= 0, got {episode!r}")
    return int(episode)


def inference_checkpoint_name(episode: int) -> str:
    """``model_ep{episode:05d}.pt``: the inference checkpoint of ``episode``."""
    return f"{INFERENCE_STEM}_ep{_checked(episode):05d}.pt"


def training_checkpoint_name(episode: int) -> str:
    """``checkpoint_ep{episode:05d}.pt``: Hamlet's training checkpoint of ``episode``."""
    return f"{TRAINING_STEM}_ep{_checked(episode):05d}.pt"


def parse_checkpoint_name(name: str) -> CheckpointName | None:
    """``"model_ep00100.pt"`` -> ``CheckpointName("model", 100)``; None for a name without ``_ep<digits>.pt``
    at its end or one that starts with a dot. ``name`` is a file name, not a path."""
    match = _NAME.match(name)
    return CheckpointName(match["stem"], int(match["episode"])) if match else None
