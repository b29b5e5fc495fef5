"""Brain specs build the right network, reject bad specs naming the field, and hash canonically."""

from __future__ import annotations

from pathlib import Path

import pytest

from townlet.agent.brain import (
    brain_spec_from_network,
    brain_spec_hash,
    build_network,
    load_brain_spec,
    normalize_brain_spec,
)
from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.inference.errors import BrainSpecError

SIMPLE = {"network": {"type": "simple", "obs_dim": 91, "action_dim": 6}}
RECURRENT = {
    "network": {
        "type": "recurrent_spatial",
        "action_dim": 6,
        "window_size": 5,
        "vision_encoder": {"type": "cnn", "filters": [16, 32], "hidden_dim": 128},
        "lstm": {"hidden_dim": 256},
        "q_head": {"type": "mlp", "hidden_dims": [128]},
    }
}


def test_builds_both_networks() -> None:
    simple = build_network(SIMPLE)
    assert isinstance(simple, SimpleQNetwork) and simple.obs_dim == 91
    recurrent = build_network(RECURRENT)
    assert isinstance(recurrent, RecurrentSpatialQNetwork) and recurrent.obs_dim == 54


def test_hash_ignores_key_order_and_defaults() -> None:
    reordered = {"network": dict(reversed(list(RECURRENT["network"].items())))}
    minimal = {"network": {"type": "recurrent_spatial", "action_dim": 6}}
    assert brain_spec_hash(RECURRENT) == brain_spec_hash(reordered) == brain_spec_hash(minimal)
    assert brain_spec_hash(RECURRENT).startswith("sha256:") and len(brain_spec_hash(RECURRENT)) == 7 + 16
    assert brain_spec_hash(SIMPLE) != brain_spec_hash({"network": {**SIMPLE["network"], "action_dim": 5}})


def test_round_trip_from_network() -> None:
    for spec in (SIMPLE, RECURRENT):
        assert brain_spec_from_network(build_network(spec)) == normalize_brain_spec(spec)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"nets": {}}, "'network'"),
        ({"network": {"type": "transformer"}}, "network.type"),
        ({"network": {"type": "simple", "action_dim": 6}}, "network.obs_dim"),
        ({"network": {"type": "simple", "obs_dim": -3, "action_dim": 6}}, "network.obs_dim"),
        ({"network": {"type": "simple", "obs_dim": 91, "action_dim": 6.0}}, "network.action_dim"),
        (
            {"network": {"type": "recurrent_spatial", "action_dim": 6, "lstm": {"hidden_dim": "big"}}},
            "network.lstm.hidden_dim",
        ),
        (
            {"network": {"type": "recurrent_spatial", "action_dim": 6, "vision_encoder": {"filters": [8]}}},
            "network.vision_encoder",
        ),
        ({"network": {"type": "simple", "obs_dim": 91, "action_dim": 6, "dropout": 0.1}}, "dropout"),
    ],
)
def test_bad_specs_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(BrainSpecError, match=field.replace(".", r"\.")):
        normalize_brain_spec(spec)


def test_brain_yaml(tmp_path: Path) -> None:
    path = tmp_path / "brain.yaml"
    path.write_text("network:\n  type: simple\n  obs_dim: 36\n  action_dim: 6\n")
    assert load_brain_spec(path)["network"]["obs_dim"] == 36
    path.write_text("network: [unclosed\n")
    with pytest.raises(BrainSpecError, match="cannot read brain spec"):
        load_brain_spec(path)
