"""The trained demo models of models/, named in one place for every test that uses them.

Each demo folder ships exactly one inference checkpoint, ``model_epNNNNN.pt``; its episode number is the
version the server gives it. Tests read the path and the version from here, so shipping a better model is a
change to models/ and the docs, not to a dozen tests.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["DEMO_L1", "DEMO_L2", "MODELS", "demo_checkpoint", "version_of"]

MODELS = Path(__file__).resolve().parents[1] / "models"


def demo_checkpoint(name: str) -> Path:
    """The one ``model_ep*.pt`` shipped in ``models/<name>/``."""
    found = sorted((MODELS / name).glob("model_ep*.pt"))
    if len(found) != 1:
        raise RuntimeError(f"models/{name} should ship exactly one model_ep*.pt, found {[p.name for p in found]}")
    return found[0]


def version_of(checkpoint: Path) -> int:
    """The episode number in ``model_epNNNNN.pt``: the version the server serves it as."""
    match = re.fullmatch(r"model_ep(\d+)\.pt", checkpoint.name)
    if match is None:
        raise ValueError(f"{checkpoint.name} is not named model_epNNNNN.pt")
    return int(match.group(1))


DEMO_L1 = demo_checkpoint("townlet-L1-mlp")  # trained SimpleQNetwork, L1, obs 91
DEMO_L2 = demo_checkpoint("townlet-L2-lstm")  # trained RecurrentSpatialQNetwork, L2, obs 54, hidden 256
