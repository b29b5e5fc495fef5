"""`HamletModel`: a trained Hamlet Q-network as a standalone, pure inference object.

    model = HamletModel.load("model_ep10000.pt")           # or a training checkpoint_ep*.pt
    result = model.predict(obs, hidden, epsilon=0.05)        # result.actions, result.q_values, result.hidden

`predict` changes nothing: not the model, not its inputs. It answers in the kind of array it was given
(numpy in, numpy out; torch in, torch out). The LSTM state of the recurrent network is passed in and
returned; ``hidden=None`` means "start of an episode" (zeros), and ``episode_start`` zeroes chosen rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from townlet.agent.networks import Hidden, QNetwork
from townlet.inference import validation
from townlet.inference.checkpoint import (
    LoadedCheckpoint,
    load_checkpoint,
    load_inference_checkpoint,
    load_training_checkpoint,
    network_params_of,
    save_inference_checkpoint,
)
from townlet.inference.errors import InvalidInputError
from townlet.inference.policy import epsilon_greedy, reset_hidden

__all__ = ["HamletModel", "PredictResult", "resolve_device"]

logger = logging.getLogger(__name__)


ArrayT = TypeVar("ArrayT", Tensor, npt.NDArray[Any])
"""The kind of array a `PredictResult` holds: ``torch.Tensor`` or ``numpy.ndarray`` (whatever ``obs`` was)."""


@dataclass(frozen=True)
class PredictResult(Generic[ArrayT]):
    """What `HamletModel.predict` returns, in the kind of array ``obs`` came as: a torch ``obs`` gives
    tensors on the model's device, anything else (numpy, lists) numpy arrays on the CPU.
    Also readable as a dict: ``result["actions"]``."""

    actions: ArrayT
    """``[B]`` int64 chosen actions."""
    q_values: ArrayT
    """``[B, A]`` float32 Q-values of the network (before any masking)."""
    hidden: tuple[ArrayT, ArrayT] | None
    """``(h, c)`` each ``[1, B, H]`` float32 after this step (recurrent net), else None."""

    def __getitem__(self, key: str) -> Any:
        if key not in ("actions", "q_values", "hidden"):
            raise KeyError(f"{key!r}; a PredictResult has 'actions', 'q_values' and 'hidden'")
        return getattr(self, key)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {str(device)!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return resolved


class HamletModel:
    """A Hamlet Q-network (`SimpleQNetwork` or `RecurrentSpatialQNetwork`) plus its metadata.

    Construct it from a checkpoint with `load` (any format), `load_from_checkpoint` (inference_v1) or
    `load_from_training_checkpoint` (Hamlet v2), or wrap a network you built: ``HamletModel(network)``.
    The network is put in eval mode; call ``model.network.train()`` yourself to fine-tune it.
    """

    def __init__(self, network: nn.Module, metadata: dict[str, Any] | None = None) -> None:
        if not isinstance(network, QNetwork):
            raise TypeError(
                f"expected a SimpleQNetwork or RecurrentSpatialQNetwork (a module with is_recurrent, obs_dim, "
                f"action_dim and forward(obs, hidden) -> (q, hidden)), got {type(network).__name__}"
            )
        self.network = network.eval()
        # Where to read the device from: the module holding the first parameter and that parameter's name, so a
        # move that replaces the parameter objects (e.g. to "meta") is still seen; walking `parameters()` on
        # every call cost ~3 us of a ~20 us batch-1 predict.
        name, _ = next(network.named_parameters())
        owner, _, self._probe_name = name.rpartition(".")
        self._probe_module: nn.Module = network.get_submodule(owner)
        params = network_params_of(network)
        self._hidden_dim: int | None = params["hidden_dim"] if network.is_recurrent else None
        base = {
            "format_version": None,
            "network_type": params["network_type"],
            "obs_dim": int(network.obs_dim),
            "action_dim": params["action_dim"],
            "hidden_dim": self._hidden_dim,
            "num_parameters": sum(p.numel() for p in network.parameters()),
            "sha256": None,
            "episode": None,
            "epsilon": None,
            "curriculum_stage": None,
            "created_at": None,
            "config_dir": None,
            "brain_spec_hash": None,
        }
        self._metadata = {**base, **(metadata or {})}

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", *, trust_pickle: bool = False) -> HamletModel:
        """Load an inference_v1 or training v2 checkpoint; the format is detected from the contents."""
        return cls._from_loaded(load_checkpoint(path, resolve_device(device), trust_pickle=trust_pickle))

    @classmethod
    def load_from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", *, trust_pickle: bool = False
    ) -> HamletModel:
        """Load an inference checkpoint (``model_ep*.pt``, format ``inference_v1``)."""
        return cls._from_loaded(load_inference_checkpoint(path, resolve_device(device), trust_pickle=trust_pickle))

    @classmethod
    def load_from_training_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", *, trust_pickle: bool = False
    ) -> HamletModel:
        """Load the online Q-network of a Hamlet training checkpoint (``checkpoint_ep*.pt``, v2)."""
        return cls._from_loaded(load_training_checkpoint(path, resolve_device(device), trust_pickle=trust_pickle))

    @classmethod
    def _from_loaded(cls, loaded: LoadedCheckpoint) -> HamletModel:
        model = cls(loaded.network, loaded.metadata)
        logger.info(
            "loaded %s %s network (%d params) from %s",
            model._metadata["format_version"],
            model._metadata["network_type"],
            model.num_parameters,
            loaded.metadata.get("source_path"),
        )
        return model

    def save(
        self,
        path: str | Path,
        metadata: dict[str, Any] | None = None,
        brain_spec: dict[str, Any] | None = None,
    ) -> Path:
        """Write an inference_v1 checkpoint (see `save_inference_checkpoint`)."""
        return save_inference_checkpoint(self, path, metadata, brain_spec)

    def export_to_onnx(self, path: str | Path, *, verify: bool = True, opset: int = 17) -> Path:
        """Export to ONNX and, by default, verify it against this model (``|onnx - torch| <= 1e-5 + 1e-5 *
        |torch|``); a file that fails verification is never written. See `townlet.inference.onnx_export`."""
        from townlet.inference import onnx_export  # optional dependency: onnx / onnxruntime

        if verify:
            return onnx_export.export_verified(self, path, opset=opset)[0]
        return onnx_export.export_to_onnx(self, path, opset=opset)

    # ------------------------------------------------------------------ properties

    @property
    def obs_dim(self) -> int:
        return int(self._metadata["obs_dim"])

    @property
    def action_dim(self) -> int:
        return int(self._metadata["action_dim"])

    @property
    def is_recurrent(self) -> bool:
        return bool(self.network.is_recurrent)

    @property
    def hidden_dim(self) -> int | None:
        """LSTM width H of the recurrent network; None for the MLP."""
        return self._hidden_dim

    @property
    def num_parameters(self) -> int:
        return int(self._metadata["num_parameters"])

    @property
    def device(self) -> torch.device:
        return self._probe_module._parameters[self._probe_name].device  # type: ignore[union-attr]

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the model's metadata (format, network type, dims, episode, epsilon, sha256, ...)."""
        return dict(self._metadata)

    def to(self, device: str | torch.device) -> HamletModel:
        """Move the network to ``device`` (``"auto"`` allowed); returns self, like ``nn.Module.to``."""
        self.network.to(resolve_device(device))
        return self

    def __repr__(self) -> str:
        m = self._metadata
        return (
            f"HamletModel({m['network_type']}, obs_dim={m['obs_dim']}, action_dim={m['action_dim']}, "
            f"episode={m['episode']}, device={self.device})"
        )

    # ------------------------------------------------------------------ inference

    def initial_hidden(self, batch_size: int) -> Hidden:
        """Zero LSTM state ``(h, c)`` each ``[1, B, H]`` on the model's device (recurrent models only)."""
        if self._hidden_dim is None:
            raise InvalidInputError("initial_hidden: this is a feed-forward (simple) model; it has no hidden state")
        zeros = torch.zeros(1, batch_size, self._hidden_dim, device=self.device)
        return zeros, zeros.clone()

    def forward(self, obs: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden | None]:
        """Trusted fast path (no validation): ``obs [B, obs_dim]`` float32 on `device` -> ``(q [B, A], hidden')``.

        Runs under ``torch.no_grad()``, or as it is when the caller is already under ``torch.inference_mode()``
        (the server's batcher): the same numbers without a second grad-mode guard per forward.
        """
        if torch.is_inference_mode_enabled():
            return self.network(obs, hidden)  # type: ignore[no-any-return]
        with torch.no_grad():
            return self.network(obs, hidden)  # type: ignore[no-any-return]

    @overload
    def predict(
        self,
        obs: Tensor,
        hidden: Any = None,
        epsilon: float = 0.0,
        action_mask: Any = None,
        generator: torch.Generator | None = None,
        episode_start: Any = None,
    ) -> PredictResult[Tensor]: ...

    @overload
    def predict(
        self,
        obs: Any,
        hidden: Any = None,
        epsilon: float = 0.0,
        action_mask: Any = None,
        generator: torch.Generator | None = None,
        episode_start: Any = None,
    ) -> PredictResult[npt.NDArray[Any]]: ...

    def predict(
        self,
        obs: Any,
        hidden: Any = None,
        epsilon: float = 0.0,
        action_mask: Any = None,
        generator: torch.Generator | None = None,
        episode_start: Any = None,
    ) -> PredictResult[Tensor] | PredictResult[npt.NDArray[Any]]:
        """Choose actions for a batch of observations, without changing anything.

        Args:
            obs: ``[obs_dim]`` or ``[B, obs_dim]`` floats: a tensor, a numpy array or a nested list.
            hidden: recurrent models: ``(h, c)`` each ``[1, B, H]`` from the previous step (tensors or numpy
                arrays); None = zeros (the start of every episode).
            epsilon: exploration rate in [0, 1], drawn per sample (0 = greedy).
            action_mask: ``[B, A]`` bool, True = allowed; each row needs one allowed action.
            generator: a ``torch.Generator`` on the model's device for reproducible exploration.
            episode_start: ``[B]`` bool, True where an episode starts with this observation: those rows of
                ``hidden`` are zeroed first (`reset_hidden`), as Stable-Baselines3 names it. Ignored by the
                feed-forward model, like ``hidden=None``.

        Returns:
            `PredictResult` with ``actions [B]`` int64, ``q_values [B, A]`` float32 and ``hidden``, in the kind
            of array ``obs`` was: torch in, torch out (on the model's device); numpy or a list in, numpy out.
            A 1-D observation is treated as a batch of one (B = 1).

        Raises:
            InvalidInputError: (a ValueError) when an argument does not fit, saying what was expected.
        """
        obs_t = self._check_obs(obs)
        batch = obs_t.shape[0]
        hidden_t = self._check_hidden(hidden, batch)
        epsilon = validation.check_epsilon(epsilon)
        mask = self._check_mask(action_mask, batch)
        starts = self._check_episode_start(episode_start, batch)
        if hidden_t is not None and starts is not None:
            hidden_t = reset_hidden(hidden_t, starts)
        q_values, new_hidden = self.forward(obs_t, hidden_t)
        actions = epsilon_greedy(q_values, epsilon, mask, generator)
        if isinstance(obs, Tensor):
            return PredictResult(actions=actions, q_values=q_values, hidden=new_hidden)
        return PredictResult(
            actions=actions.cpu().numpy(),
            q_values=q_values.cpu().numpy(),
            hidden=None if new_hidden is None else (new_hidden[0].cpu().numpy(), new_hidden[1].cpu().numpy()),
        )

    # ------------------------------------------------------------------ validation

    def _check_obs(self, obs: Any) -> Tensor:
        if not isinstance(obs, Tensor):  # numpy, a list: checked as numpy, then moved
            return torch.from_numpy(validation.obs_array(obs, self.obs_dim)).to(self.device)
        if obs.dim() == 1:
            obs = obs.unsqueeze(0)
        validation.check_obs(tuple(obs.shape), obs.is_floating_point(), obs.dtype, self.obs_dim)
        device = self.device
        checked: Tensor = obs if obs.dtype == torch.float32 and obs.device == device else obs.to(device, torch.float32)
        validation.check_finite("obs", checked)
        return checked

    def _check_hidden(self, hidden: Any, batch: int) -> Hidden | None:
        expected = [1, batch, self._hidden_dim or 0]
        if not validation.check_hidden_pair(hidden, expected, self._hidden_dim is not None):
            return None if self._hidden_dim is None else self.initial_hidden(batch)
        checked = []
        for name, part in zip("hc", hidden, strict=True):
            part = torch.as_tensor(part)
            validation.check_hidden_part(name, tuple(part.shape), part.is_floating_point(), part.dtype, expected)
            part = part.to(device=self.device, dtype=torch.float32)
            validation.check_finite(f"hidden {name}", part.reshape(batch, -1))
            checked.append(part)
        return checked[0], checked[1]

    def _check_mask(self, mask: Any, batch: int) -> Tensor | None:
        if not isinstance(mask, Tensor):  # None, numpy, a list: checked as numpy (numpy's dtype names), then moved
            checked = validation.mask_array(mask, batch, self.action_dim)
            return None if checked is None else torch.from_numpy(checked).to(self.device)
        mask_t: Tensor = mask.unsqueeze(0) if mask.dim() == 1 else mask
        validation.check_mask(tuple(mask_t.shape), mask_t.dtype == torch.bool, mask_t.dtype, batch, self.action_dim)
        validation.reject_empty_mask_rows(torch.nonzero(~mask_t.any(dim=1)).flatten().tolist())
        return mask_t.to(self.device)

    def _check_episode_start(self, episode_start: Any, batch: int) -> Tensor | None:
        if episode_start is None:
            return None
        starts = episode_start if isinstance(episode_start, Tensor) else torch.as_tensor(np.asarray(episode_start))
        if starts.dtype != torch.bool:
            raise InvalidInputError(
                f"episode_start: expected dtype bool (True where an episode starts), got {starts.dtype}; "
                "pass e.g. np.asarray(dones, dtype=bool)"
            )
        if starts.dim() == 0:
            starts = starts.reshape(1)
        if list(starts.shape) != [batch]:
            raise InvalidInputError(
                f"episode_start: expected shape [{batch}] (one flag per row), got {list(starts.shape)}"
            )
        return starts.to(self.device)
