"""Standalone inference for trained Hamlet agents: load a checkpoint in one line, predict purely.

    from townlet.inference import HamletModel
    model = HamletModel.load("checkpoint_ep10000.pt")     # training v2 or inference_v1
    result = model.predict(obs, hidden=None, epsilon=0.0)

Names are imported lazily, so torch-free submodules (`errors`, the ONNX Runtime predictor) stay torch-free.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from townlet.inference.checkpoint import INFERENCE_V1, TRAINING_V2, save_inference_checkpoint
    from townlet.inference.errors import (
        BrainSpecError,
        CheckpointError,
        InferenceError,
        InvalidInputError,
        UnsafeCheckpointError,
    )
    from townlet.inference.model import HamletModel, PredictResult
    from townlet.inference.policy import epsilon_greedy, reset_hidden

_HOMES = {
    "INFERENCE_V1": "checkpoint",
    "TRAINING_V2": "checkpoint",
    "save_inference_checkpoint": "checkpoint",
    "BrainSpecError": "errors",
    "CheckpointError": "errors",
    "InferenceError": "errors",
    "InvalidInputError": "errors",
    "UnsafeCheckpointError": "errors",
    "HamletModel": "model",
    "PredictResult": "model",
    "epsilon_greedy": "policy",
    "reset_hidden": "policy",
}

__all__ = [
    "INFERENCE_V1",
    "TRAINING_V2",
    "BrainSpecError",
    "CheckpointError",
    "HamletModel",
    "InferenceError",
    "InvalidInputError",
    "PredictResult",
    "UnsafeCheckpointError",
    "epsilon_greedy",
    "reset_hidden",
    "save_inference_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'townlet.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f"townlet.inference.{_HOMES[name]}"), name)
