"""Errors of `townlet.training`: a bad config, or a run folder that cannot be started or resumed."""

from __future__ import annotations

__all__ = ["ResumeError", "TrainingConfigError", "TrainingError"]


class TrainingError(ValueError):
    """Base class of every error the trainer raises on purpose."""


class TrainingConfigError(TrainingError):
    """A `TrainConfig` value is out of range or unknown."""


class ResumeError(TrainingError):
    """The run folder holds no checkpoint to resume, or one written with an incompatible config."""
