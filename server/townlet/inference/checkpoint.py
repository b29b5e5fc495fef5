"""Checkpoint files: read Hamlet training checkpoints (v2), read and write inference checkpoints (inference_v1).

Every read goes through `read_checkpoint`, which uses ``torch.load(weights_only=True)`` and refuses a file
that needs arbitrary unpickling (`UnsafeCheckpointError`, listing the globals it wants) unless the caller
passes ``trust_pickle=True``. Architecture is always read from tensor shapes (reference section 2.3), never
from the checkpoint's ``universe_metadata`` (its ``action_dim`` is a hard-coded, wrong 5).

inference_v1 layout (a plain dict; only tensors, containers and scalars)::

    {"format_version": "inference_v1", "state_dict": {...}, "metadata": {...}, "created_at": float,
     "brain_spec": {...}, "brain_spec_hash": "sha256:..."}      # or, instead of the brain spec,
     "network_params": {"network_type": "simple"|"recurrent", "obs_dim"|"window_size", "action_dim", ...}
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import pickle
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from townlet.agent.brain import (
    BrainSpecError,
    brain_spec_from_network,
    brain_spec_hash,
    build_network,
    normalize_brain_spec,
)
from townlet.inference.atomic_write import atomic_write
from townlet.inference.errors import CheckpointError, UnsafeCheckpointError, first_line

__all__ = [
    "INFERENCE_V1",
    "TRAINING_V2",
    "LoadedCheckpoint",
    "build_network_from_params",
    "detect_format",
    "infer_network_params",
    "load_checkpoint",
    "load_inference_checkpoint",
    "load_training_checkpoint",
    "network_params_of",
    "read_checkpoint",
    "save_inference_checkpoint",
]

logger = logging.getLogger(__name__)

INFERENCE_V1 = "inference_v1"
TRAINING_V2 = "training_v2"

# Metadata travels under these names in the file (the seed's names) and under the plain ones on a model.
_FILE_KEYS = {"episode": "training_episode", "config_dir": "training_config_path"}
_DERIVED_KEYS = ("format_version", "sha256", "created_at", "brain_spec_hash", "source_path")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A network rebuilt from a file (in eval mode, on the requested device) and its metadata."""

    network: nn.Module
    metadata: dict[str, Any]


# --------------------------------------------------------------------------- reading


def read_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, trust_pickle: bool = False
) -> tuple[Any, str]:
    """Load a file's object with ``weights_only=True`` and return ``(object, sha256 hex of the file)``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except OSError as exc:
        raise CheckpointError(path, f"cannot read the file: {exc.strerror or exc}") from exc
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True), sha256
    except pickle.UnpicklingError as exc:
        wanted = _unsafe_globals(data) or _refused_globals(exc)
        if not wanted:
            raise CheckpointError(path, f"not a readable torch checkpoint: {_weights_only_refusal(exc)}") from None
        if not trust_pickle:
            raise UnsafeCheckpointError(path, wanted) from None
        logger.warning("%s: unpickling arbitrary globals %s because trust_pickle=True", path, wanted)
    except Exception as exc:  # a truncated zip, random bytes, a directory ...: all mean "not a checkpoint"
        raise CheckpointError(path, f"not a readable torch checkpoint ({first_line(exc)})") from None
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=False), sha256
    except Exception as exc:
        raise CheckpointError(path, f"trusted unpickling failed: {first_line(exc)}") from None


def detect_format(obj: Any) -> str | None:
    """`INFERENCE_V1`, `TRAINING_V2`, or None for an object that is neither."""
    if not isinstance(obj, Mapping):
        return None
    if "format_version" in obj:
        return INFERENCE_V1 if obj["format_version"] == INFERENCE_V1 else None
    if obj.get("version") == 2 and isinstance(obj.get("population_state"), Mapping):
        return TRAINING_V2
    return None


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, trust_pickle: bool = False
) -> LoadedCheckpoint:
    """Load either format, detected from the file's contents (not its name)."""
    obj, sha256 = read_checkpoint(path, device, trust_pickle=trust_pickle)
    if detect_format(obj) == TRAINING_V2:
        return _network_from_training(path, obj, sha256)
    return _network_from_inference(path, obj, sha256)


def load_inference_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, trust_pickle: bool = False
) -> LoadedCheckpoint:
    """Load an ``inference_v1`` file (``model_ep*.pt``)."""
    obj, sha256 = read_checkpoint(path, device, trust_pickle=trust_pickle)
    return _network_from_inference(path, obj, sha256)


def load_training_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", *, trust_pickle: bool = False
) -> LoadedCheckpoint:
    """Load a Hamlet training checkpoint v2 (``checkpoint_ep*.pt``): only the online Q-network is kept."""
    obj, sha256 = read_checkpoint(path, device, trust_pickle=trust_pickle)
    return _network_from_training(path, obj, sha256)


def _network_from_inference(path: str | Path, obj: Any, sha256: str) -> LoadedCheckpoint:
    if not isinstance(obj, Mapping) or "format_version" not in obj:
        hint = " (it looks like a training checkpoint v2)" if detect_format(obj) == TRAINING_V2 else ""
        raise CheckpointError(path, f"not an inference checkpoint: no 'format_version' key{hint}")
    if obj["format_version"] != INFERENCE_V1:
        raise CheckpointError(
            path, f"unknown format_version {obj['format_version']!r}; this version reads {INFERENCE_V1!r}"
        )
    state_dict = _state_dict(path, obj.get("state_dict"), "state_dict")
    spec_hash = None
    if "brain_spec" in obj:
        try:
            spec = normalize_brain_spec(obj["brain_spec"])
        except BrainSpecError as exc:
            raise CheckpointError(path, f"invalid brain_spec: {exc}") from None
        spec_hash = brain_spec_hash(spec)
        if obj.get("brain_spec_hash") not in (None, spec_hash):
            logger.warning(
                "%s: brain_spec_hash %s does not match the spec (%s)", path, obj["brain_spec_hash"], spec_hash
            )
        with torch.device("meta"):  # shapes only: the weights below replace every value
            network = build_network(spec)
        source = "brain_spec"
    elif "network_params" in obj:
        network, source = _build_or_fail(path, obj["network_params"]), "network_params"
    else:
        raise CheckpointError(path, "inference checkpoint has neither 'brain_spec' nor 'network_params'")
    _load_weights(path, network, state_dict, source)
    file_meta = obj.get("metadata") or {}
    if not isinstance(file_meta, Mapping):
        raise CheckpointError(path, f"'metadata' must be a dict, got {type(file_meta).__name__}")
    metadata = {key: value for key, value in file_meta.items() if key not in _FILE_KEYS.values()}
    for plain, in_file in _FILE_KEYS.items():
        metadata[plain] = file_meta.get(in_file)
    metadata.update(
        format_version=INFERENCE_V1,
        created_at=obj.get("created_at"),
        brain_spec_hash=spec_hash,
    )
    return LoadedCheckpoint(network, _complete_metadata(metadata, network, path, sha256))


def _network_from_training(path: str | Path, obj: Any, sha256: str) -> LoadedCheckpoint:
    if detect_format(obj) != TRAINING_V2:
        raise CheckpointError(
            path, "not a Hamlet training checkpoint: expected a dict with version 2 and 'population_state'"
        )
    population = obj["population_state"]
    state_dict = _state_dict(path, population.get("q_network"), "population_state.q_network")
    config = obj.get("training_config") if isinstance(obj.get("training_config"), Mapping) else {}
    configured = (config.get("population") or {}).get("network_type")
    try:
        params = infer_network_params(state_dict, configured)
    except ValueError as exc:
        raise CheckpointError(path, str(exc)) from None
    network = _build_or_fail(path, params)
    _load_weights(path, network, state_dict, "population_state.q_network")
    metadata: dict[str, Any] = {
        "format_version": TRAINING_V2,
        "episode": obj.get("episode"),
        "epsilon": _training_epsilon(obj),
        "curriculum_stage": _stage_of_agent0(obj.get("curriculum_state")),
        "created_at": obj.get("timestamp"),
        "config_dir": obj.get("config_dir"),
        "brain_spec_hash": None,
    }
    return LoadedCheckpoint(network, _complete_metadata(metadata, network, path, sha256))


# --------------------------------------------------------------------------- architecture from shapes


def infer_network_params(state_dict: Mapping[str, Tensor], network_type: str | None = None) -> dict[str, Any]:
    """Read a network's architecture from its weights (reference 2.3); raises ValueError on a mismatch.

    ``network_type`` ("simple" | "recurrent") is what a training config claims; None detects it from keys.
    """
    detected = "recurrent" if "lstm.weight_ih_l0" in state_dict else "simple" if "net.0.weight" in state_dict else None
    if detected is None:
        raise ValueError(
            "state_dict is neither a SimpleQNetwork (no 'net.0.weight') nor a "
            "RecurrentSpatialQNetwork (no 'lstm.weight_ih_l0')"
        )
    if network_type is not None and network_type != detected:
        raise ValueError(
            f"training_config says network_type={network_type!r} but the weights are a {detected!r} network"
        )
    shape = _shape_reader(state_dict)
    if detected == "simple":
        hidden, obs_dim = shape("net.0.weight", 2)
        return {
            "network_type": "simple",
            "obs_dim": obs_dim,
            "action_dim": shape("net.6.weight", 2)[0],
            "hidden_dim": hidden,
        }
    vision_in = shape("vision_encoder.5.weight", 2)[1]
    window = math.isqrt(vision_in // 32)
    if 32 * window * window != vision_in:
        raise ValueError(f"vision_encoder.5.weight has {vision_in} inputs; expected 32 * window_size**2")
    return {
        "network_type": "recurrent",
        "action_dim": shape("q_head.3.weight", 2)[0],
        "window_size": window,
        "num_meters": shape("meter_encoder.0.weight", 2)[1],
        "num_affordance_types": shape("affordance_encoder.0.weight", 2)[1] - 1,
        "hidden_dim": shape("lstm.weight_hh_l0", 2)[1],
    }


def network_params_of(network: nn.Module) -> dict[str, Any]:
    """The ``network_params`` dict (fallback format) that rebuilds ``network``."""
    return infer_network_params(network.state_dict())


def build_network_from_params(params: Mapping[str, Any], *, empty: bool = False) -> nn.Module:
    """Build a network from ``network_params``; raises `BrainSpecError` (a ValueError) naming a bad field.

    With ``empty=True`` the network is built on the ``meta`` device: shapes without storage and without the
    random initialisation (for the LSTM, most of the build), to be filled by
    ``load_state_dict(state_dict, assign=True)`` as the loaders here do.
    """
    if empty:
        with torch.device("meta"):
            return build_network_from_params(params)
    if not isinstance(params, Mapping):
        raise BrainSpecError(f"network_params: expected a dict, got {type(params).__name__}")
    rest = dict(params)
    kind = rest.pop("network_type", None)
    if kind == "simple":
        return build_network({"network": {"type": "simple", **rest}})
    if kind == "recurrent":
        lstm = {"hidden_dim": rest.pop("hidden_dim")} if "hidden_dim" in rest else {}
        return build_network({"network": {"type": "recurrent_spatial", **rest, **({"lstm": lstm} if lstm else {})}})
    raise BrainSpecError(f"network_params.network_type: expected 'simple' or 'recurrent', got {kind!r}")


# --------------------------------------------------------------------------- writing


def save_inference_checkpoint(
    model: Any,
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
    brain_spec: Mapping[str, Any] | None = None,
) -> Path:
    """Write an ``inference_v1`` file atomically (temp file + rename) and return its path.

    ``model`` is a `HamletModel` or a bare Hamlet Q-network. ``metadata`` defaults to the model's own; its
    ``episode`` / ``config_dir`` are stored under the seed's names ``training_episode`` /
    ``training_config_path``. With ``brain_spec`` the file carries it and its hash (it must describe the
    network); without, it carries ``network_params``.
    """
    network: nn.Module = getattr(model, "network", model)
    if metadata is None:
        metadata = getattr(model, "metadata", None) or {}
    params = network_params_of(network)
    file_meta = {
        _FILE_KEYS.get(k, k): _plain(v, f"metadata[{k!r}]") for k, v in metadata.items() if k not in _DERIVED_KEYS
    }
    file_meta.update(params, num_parameters=_count_parameters(network))
    checkpoint: dict[str, Any] = {
        "format_version": INFERENCE_V1,
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()},
        "metadata": file_meta,
        "created_at": time.time(),
    }
    if brain_spec is not None:
        spec = normalize_brain_spec(brain_spec)
        if spec != brain_spec_from_network(network):
            raise BrainSpecError(
                f"brain_spec {spec['network']} does not describe the network being saved "
                f"({brain_spec_from_network(network)['network']})"
            )
        checkpoint["brain_spec"] = spec
        checkpoint["brain_spec_hash"] = brain_spec_hash(spec)
    else:
        checkpoint["network_params"] = params
    return atomic_torch_save(checkpoint, Path(path))


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` through `atomic_write`: readers never see half a file."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


# --------------------------------------------------------------------------- small pieces


def _state_dict(path: str | Path, value: Any, where: str) -> Mapping[str, Tensor]:
    if not isinstance(value, Mapping) or not value or not all(isinstance(t, Tensor) for t in value.values()):
        raise CheckpointError(path, f"{where} is not a state_dict (a non-empty dict of tensors)")
    return value


def _build_or_fail(path: str | Path, params: Any) -> nn.Module:
    try:
        return build_network_from_params(params, empty=True)
    except BrainSpecError as exc:
        raise CheckpointError(path, f"invalid network_params: {exc}") from None


def _load_weights(path: str | Path, network: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Fill ``network`` (built on the meta device) with the file's tensors, which become its parameters.

    ``assign=True`` adopts the loaded tensors instead of copying them into freshly initialised ones; each is
    first cast to the dtype the network declares, as a copying load would. The shapes and the key set are
    checked by ``load_state_dict(strict=True)`` as before.
    """
    _refuse_non_finite(path, state_dict)
    declared = {name: t.dtype for name, t in network.state_dict(keep_vars=True).items()}
    weights = {
        name: t.to(declared[name]) if name in declared and t.dtype != declared[name] else t
        for name, t in state_dict.items()
    }
    try:
        network.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(path, f"weights do not match the network rebuilt from {source}: {detail}") from None
    left = [name for name, t in network.state_dict(keep_vars=True).items() if t.is_meta]
    if left:  # a module holding a tensor that no state_dict carries: never the case for Hamlet's networks
        raise CheckpointError(path, f"the file does not set {left[:5]} of the network rebuilt from {source}")
    for module in network.modules():  # the LSTM's weights now live in separate tensors: pack them for cuDNN
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters()
    network.eval()  # already on the file's map_location device: its tensors are the network's parameters


def _refuse_non_finite(path: str | Path, state_dict: Mapping[str, Tensor]) -> None:
    """A diverged training run writes NaN or Inf weights; such a model answers NaN Q-values and action 0."""
    floats = [t for t in state_dict.values() if t.is_floating_point()]
    if not floats:
        return
    # One fused pass (clip_grad_norm_'s kernel) when all is well: a NaN or Inf in a tensor makes its norm one.
    # So does overflow of huge finite values; the exact element count below then finds nothing to refuse.
    with torch.no_grad():
        norms = torch._foreach_norm(floats)
    if all(math.isfinite(norm.item()) for norm in norms):
        return
    bad = [_non_finite_count(name, t) for name, t in state_dict.items() if t.is_floating_point()]
    found = [text for text in bad if text]
    if found:
        more = f"; and {len(found) - 3} more tensor(s)" if len(found) > 3 else ""
        raise CheckpointError(
            path, f"non-finite weights (a diverged training run?): {'; '.join(found[:3])}{more}; refusing to load"
        )


def _non_finite_count(name: str, tensor: Tensor) -> str:
    """``""`` when every value is finite, else e.g. ``"net.0.weight: 4096 of 4096 values are NaN"``."""
    if bool(torch.isfinite(tensor).all()):
        return ""
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    kind = "NaN" if not inf else "Inf" if not nan else f"NaN or Inf ({nan} NaN, {inf} Inf)"
    return f"{name}: {nan + inf} of {tensor.numel()} values are {kind}"


def _complete_metadata(meta: dict[str, Any], network: nn.Module, path: str | Path, sha256: str) -> dict[str, Any]:
    params = network_params_of(network)
    meta.update(
        network_type=params["network_type"],
        obs_dim=int(getattr(network, "obs_dim")),  # noqa: B009 - both networks define it
        action_dim=params["action_dim"],
        hidden_dim=params["hidden_dim"] if params["network_type"] == "recurrent" else None,
        num_parameters=_count_parameters(network),
        sha256=sha256,
        source_path=str(path),
    )
    for key in ("episode", "epsilon", "curriculum_stage", "created_at", "config_dir", "brain_spec_hash"):
        meta.setdefault(key, None)
    return meta


def _training_epsilon(obj: Mapping[str, Any]) -> float | None:
    if isinstance(obj.get("epsilon"), (int, float)):
        return float(obj["epsilon"])
    try:
        return float(obj["population_state"]["exploration_state"]["rnd_state"]["epsilon"])
    except (KeyError, TypeError, ValueError):
        return None


def _stage_of_agent0(curriculum: Any) -> int | None:
    stages = curriculum.get("agent_stages") if isinstance(curriculum, Mapping) else None
    if isinstance(stages, Tensor) and stages.numel() > 0:
        return int(stages.flatten()[0].item())
    return None


def _shape_reader(state_dict: Mapping[str, Tensor]) -> Any:
    def shape(key: str, rank: int) -> tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(f"state_dict has no {key!r}")
        value = tuple(state_dict[key].shape)
        if len(value) != rank:
            raise ValueError(f"{key} has shape {list(value)}; expected rank {rank}")
        return value

    return shape


def _count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def _plain(value: Any, where: str) -> Any:
    """Check metadata holds only what ``weights_only`` loading accepts; unwrap 0-d tensors / numpy scalars."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(
        f"{where}: metadata values must be str, int, float, bool, None, lists or dicts; got {type(value).__name__}"
    )


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")


def _refused_globals(exc: pickle.UnpicklingError) -> list[str]:
    """The global torch's weights_only unpickler named in its refusal (legacy, non-zip files, where
    `torch.serialization.get_unsafe_globals_in_checkpoint` cannot look)."""
    return _REFUSED_GLOBAL.findall(str(exc))[:1]


def _weights_only_refusal(exc: pickle.UnpicklingError) -> str:
    """Why torch's weights_only unpickler refused a file, in our words: torch's own message is a page of advice
    (re-run with ``weights_only=False``, ``add_safe_globals``) in ANSI bold, none of which is ours to give."""
    found = _UNPICKLER_ERROR.search(str(exc))
    if found is None:
        return first_line(exc)
    return f"weights_only unpickling refused it ({found[1].strip()[:200]}); nothing in it was run"


def _unsafe_globals(data: bytes) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception:
        return []
