"""How a checkpoint becomes something the batcher can run: eager PyTorch, or ONNX Runtime.

Both give the batcher the same surface, named `Backend`: `forward(obs [B, obs_dim] float32 tensor on device,
hidden (h, c) [1, B, H] or None) -> (q [B, A], hidden' or None)` plus `obs_dim`, `action_dim`,
`is_recurrent`, `hidden_dim`, `device`, `num_parameters` and `metadata`. `HamletModel` and `OnnxBackedModel`
implement it structurally (neither inherits from it).

- `torch`: `HamletModel.load(path, device)`; its `forward` is exactly what `HamletModel.predict` computes.
- `onnx`: the checkpoint is loaded with `HamletModel.load`, exported to ONNX and verified against PyTorch
  (`export_verified`: every output within 1e-5 + 1e-5 x |torch|, element-wise; the log line says what was
  measured), and run by onnxruntime on the CPU. On a small CPU this is several times faster at small batch;
  Q-values match PyTorch to a few float32 ULPs (trained demo models: <= 2.7e-5 absolute, <= 1e-6 relative),
  not bit for bit, so greedy actions agree except on near-ties.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from hamlet_server.artifacts import VerifiedExport

if TYPE_CHECKING:
    from townlet.inference.model import HamletModel
    from townlet.inference.onnx_runtime import OnnxModel

__all__ = ["BACKENDS", "Backend", "Hidden", "OnnxBackedModel", "load_backend", "resolve_backend"]

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnx")

Hidden = tuple[torch.Tensor, torch.Tensor]
"""LSTM state ``(h, c)``, each ``[1, B, H]`` on the backend's device."""


class Backend(Protocol):
    """What the batcher and the canary run for one model version (`HamletModel`, `OnnxBackedModel`).

    `forward` is the trusted fast path: no validation, no sampling. The server calls it under
    ``torch.inference_mode()``; a backend must give the same answer there as outside it.
    """

    @property
    def obs_dim(self) -> int: ...
    @property
    def action_dim(self) -> int: ...
    @property
    def is_recurrent(self) -> bool: ...
    @property
    def hidden_dim(self) -> int | None: ...  # H of a recurrent backend, else None
    @property
    def device(self) -> torch.device: ...
    @property
    def num_parameters(self) -> int: ...
    @property
    def metadata(self) -> dict[str, Any]: ...

    def forward(self, obs: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden | None]:
        """``obs [B, obs_dim]`` float32 on `device`, ``hidden`` (h, c) ``[1, B, H]`` or None (zeros) ->
        ``(q [B, A], hidden')``; ``hidden'`` is None for a feed-forward backend."""
        ...


class OnnxBackedModel:
    """A HamletModel's metadata with an onnxruntime session doing the forward (CPU, torch tensors in/out)."""

    def __init__(self, model: HamletModel, onnx_model: OnnxModel, onnx_export: VerifiedExport | None = None) -> None:
        self._model = model
        self._onnx = onnx_model
        self.onnx_export = onnx_export
        """The verified file this session runs, kept for clients that fetch it (`hamlet_server.artifacts`)."""
        self.obs_dim = int(model.obs_dim)
        self.action_dim = int(model.action_dim)
        self.is_recurrent = bool(model.is_recurrent)
        self.hidden_dim = model.hidden_dim
        self.num_parameters = int(model.num_parameters)
        self.device = torch.device("cpu")

    @property
    def metadata(self) -> dict[str, Any]:
        return {**self._model.metadata, "backend": "onnxruntime"}

    def forward(self, obs: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden | None]:
        np_hidden = None if hidden is None else (hidden[0].numpy(), hidden[1].numpy())
        q, new_hidden = self._onnx.forward(obs.numpy(), np_hidden)
        if new_hidden is None:
            return torch.from_numpy(q), None
        return torch.from_numpy(q), (torch.from_numpy(new_hidden[0]), torch.from_numpy(new_hidden[1]))


def resolve_backend(backend: str, device: str) -> str:
    """``auto`` -> ``onnx`` on the CPU when onnx and onnxruntime are installed (faster at the small batches a
    server mostly sees), else ``torch`` (any device, and CUDA); ``torch`` and ``onnx`` are returned as given."""
    if backend != "auto":
        return backend
    installed = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
    return "onnx" if torch.device(device).type == "cpu" and installed else "torch"


def load_backend(path: Path, device: str, backend: str = "torch", threads: int = 1) -> Backend:
    """Load `path` for serving with `backend` ("torch" or "onnx") on `device`."""
    from townlet.inference import HamletModel

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "torch":
        return HamletModel.load(path, device=device)
    if torch.device(device).type != "cpu":
        raise ValueError(f"the onnx backend runs on the CPU; got device {device!r} (use --backend torch for CUDA)")
    from townlet.inference.onnx_export import export_verified
    from townlet.inference.onnx_runtime import OnnxModel

    model = HamletModel.load(path, device="cpu")
    with tempfile.TemporaryDirectory(prefix="hamlet-onnx-") as tmp:
        onnx_path, report = export_verified(model, Path(tmp) / "model.onnx")
        onnx_model = OnnxModel(onnx_path, num_threads=threads)  # the session holds the graph; the file can go
        export = VerifiedExport(onnx_path.read_bytes(), report.atol, report.rtol, report.brief())
    log.info("%s: exported to ONNX and verified against PyTorch (%s); serving with onnxruntime",
             path.name, report.brief())  # fmt: skip
    return OnnxBackedModel(model, onnx_model, export)


if TYPE_CHECKING:

    def _implements_backend(torch_model: HamletModel, onnx_model: OnnxBackedModel) -> tuple[Backend, Backend]:
        """Never called: mypy checks here that both backends implement `Backend`."""
        return torch_model, onnx_model
