"""Standalone inference for trained Hamlet agents: load a checkpoint in one line, predict purely.

from townlet.inference import HamletModel
model = HamletModel.load("checkpoint_ep10000.pt")     # training v2 or inference_v1
result = model.predict(obs, hidden=None, epsilon=0.0)
"""

from townlet.inference.checkpoint import INFERENCE_V1, TRAINING_V2, save_inference_checkpoint
from townlet.inference.errors import (
    BrainSpecError,
    CheckpointError,
    InferenceError,
    InvalidInputError,
    UnsafeCheckpointError,
)
from townlet.inference.model import HamletModel, PredictResult
from townlet.inference.policy import epsilon_greedy

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
    "save_inference_checkpoint",
]
