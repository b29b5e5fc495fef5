"""Shared test set-up: one torch thread (2-core machines), and Hamlet training runs written on demand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hamlet_runs import make_network, write_training_checkpoint  # tests/ is on sys.path (pytest rootdir conftest)

torch.set_num_threads(1)


@pytest.fixture(params=["simple", "recurrent"])
def network_type(request: pytest.FixtureRequest) -> str:
    """Runs a test once for Hamlet's MLP (L1) and once for its CNN+LSTM (L2)."""
    return str(request.param)


@pytest.fixture
def training_checkpoint(tmp_path: Path, network_type: str) -> Path:
    """A Hamlet v2 training checkpoint of a seeded network of ``network_type``."""
    return write_training_checkpoint(tmp_path / "run" / "checkpoints", network_type)


@pytest.fixture
def raw_network(training_checkpoint: Path, network_type: str) -> torch.nn.Module:
    """The network saved in ``training_checkpoint``, loaded the plain way (``load_state_dict(strict=True)``)."""
    network = make_network(network_type, seed=123)
    state = torch.load(training_checkpoint, weights_only=True)["population_state"]["q_network"]
    network.load_state_dict(state, strict=True)
    return network.eval()
