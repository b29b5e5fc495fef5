"""Brain specs: a small declarative description of a Q-network (dict or ``brain.yaml``) <-> the network.

Two network types exist, matching what Hamlet trains::

    network:                          network:
      type: simple                      type: recurrent_spatial
      obs_dim: 91                       action_dim: 6
      action_dim: 6                     window_size: 5
      hidden_dim: 128                   num_meters: 8
                                        num_affordance_types: 14
                                        vision_encoder: {type: cnn, filters: [16, 32], hidden_dim: 128}
                                        position_encoder: {type: mlp, hidden_dim: 32}
                                        meter_encoder: {type: mlp, hidden_dim: 32}
                                        affordance_encoder: {type: mlp, hidden_dim: 32}
                                        lstm: {hidden_dim: 256}
                                        q_head: {type: mlp, hidden_dims: [128]}

The encoder and head sub-specs are optional; when given they must describe Hamlet's fixed layers (the
networks do not build other widths), so a spec never silently means something the network is not.
`brain_spec_hash` hashes the normalised spec, so key order and omitted defaults do not change it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from townlet.agent.errors import BrainSpecError
from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork

__all__ = [
    "BrainSpecError",
    "brain_spec_from_network",
    "brain_spec_hash",
    "build_network",
    "load_brain_spec",
    "normalize_brain_spec",
]

BRAIN_TYPES = ("simple", "recurrent_spatial")

# Hamlet's fixed sub-layers of the recurrent network: allowed in a spec only with exactly these values.
_FIXED_RECURRENT_PARTS: dict[str, dict[str, Any]] = {
    "vision_encoder": {"type": "cnn", "filters": [16, 32], "hidden_dim": 128},
    "position_encoder": {"type": "mlp", "hidden_dim": 32},
    "meter_encoder": {"type": "mlp", "hidden_dim": 32},
    "affordance_encoder": {"type": "mlp", "hidden_dim": 32},
    "q_head": {"type": "mlp", "hidden_dims": [128]},
}
_INT_FIELDS = {
    "simple": {"obs_dim": None, "action_dim": None, "hidden_dim": 128},
    "recurrent_spatial": {"action_dim": None, "window_size": 5, "num_meters": 8, "num_affordance_types": 14},
}


def load_brain_spec(path: str | Path) -> dict[str, Any]:
    """Read a ``brain.yaml`` and return its normalised spec."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BrainSpecError(f"cannot read brain spec {path}: {exc}") from exc
    return normalize_brain_spec(raw)


def normalize_brain_spec(spec: Any) -> dict[str, Any]:
    """Validate ``spec`` and return a new dict with every default filled in.

    Raises `BrainSpecError` naming the field (e.g. ``network.action_dim``) when something is wrong.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("network"), Mapping):
        raise BrainSpecError(f"brain spec: expected a mapping with a 'network' mapping, got {spec!r:.80}")
    net = dict(spec["network"])
    kind = net.pop("type", None)
    if kind not in BRAIN_TYPES:
        raise BrainSpecError(f"network.type: expected one of {list(BRAIN_TYPES)}, got {kind!r}")
    out: dict[str, Any] = {"type": kind}
    for field, default in _INT_FIELDS[kind].items():
        out[field] = _positive_int(net.pop(field, default), f"network.{field}")
    if kind == "recurrent_spatial":
        lstm = net.pop("lstm", {"hidden_dim": 256})
        if not isinstance(lstm, Mapping) or set(lstm) - {"hidden_dim"}:
            raise BrainSpecError(f"network.lstm: expected {{hidden_dim: int}}, got {lstm!r}")
        out["lstm"] = {"hidden_dim": _positive_int(lstm.get("hidden_dim", 256), "network.lstm.hidden_dim")}
        for part, fixed in _FIXED_RECURRENT_PARTS.items():
            given = net.pop(part, fixed)
            if not isinstance(given, Mapping) or {**fixed, **given} != fixed:
                raise BrainSpecError(
                    f"network.{part}: only Hamlet's layer is supported, expected {fixed}, got {given!r}"
                )
            out[part] = copy.deepcopy(fixed)
    if net:
        raise BrainSpecError(f"network: unknown field(s) {sorted(net)} for type {kind!r}")
    return {"network": out}


def brain_spec_hash(spec: Mapping[str, Any]) -> str:
    """``sha256:<16 hex>`` of the normalised spec; independent of key order and omitted defaults."""
    canonical = json.dumps(normalize_brain_spec(spec), sort_keys=True, separators=(",", ":"))
    return f"sha256:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def build_network(spec: Mapping[str, Any]) -> nn.Module:
    """Build the (randomly initialised) network a spec describes."""
    net = normalize_brain_spec(spec)["network"]
    if net["type"] == "simple":
        return SimpleQNetwork(net["obs_dim"], net["action_dim"], net["hidden_dim"])
    return RecurrentSpatialQNetwork(
        action_dim=net["action_dim"],
        window_size=net["window_size"],
        num_meters=net["num_meters"],
        num_affordance_types=net["num_affordance_types"],
        hidden_dim=net["lstm"]["hidden_dim"],
    )


def brain_spec_from_network(network: nn.Module) -> dict[str, Any]:
    """The normalised spec that rebuilds ``network``'s architecture."""
    if isinstance(network, SimpleQNetwork):
        raw: dict[str, Any] = {
            "type": "simple",
            "obs_dim": network.obs_dim,
            "action_dim": network.action_dim,
            "hidden_dim": network.hidden_dim,
        }
    elif isinstance(network, RecurrentSpatialQNetwork):
        raw = {
            "type": "recurrent_spatial",
            "action_dim": network.action_dim,
            "window_size": network.window_size,
            "num_meters": network.num_meters,
            "num_affordance_types": network.num_affordance_types,
            "lstm": {"hidden_dim": network.hidden_dim},
        }
    else:
        raise BrainSpecError(f"no brain spec for {type(network).__name__}; expected a Hamlet Q-network")
    return normalize_brain_spec({"network": raw})


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BrainSpecError(f"{field}: expected a positive integer, got {value!r}")
    return value
