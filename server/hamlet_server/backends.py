"""How a model file becomes something the batcher can run: eager PyTorch, or ONNX Runtime.

Both give the batcher the same surface, named `Backend`: `forward(obs [B, obs_dim] float32, hidden (h, c)
[1, B, H] or None) -> (q [B, A], hidden' or None)` on the backend's own arrays, plus `obs_dim`, `action_dim`,
`is_recurrent`, `hidden_dim`, `device`, `num_parameters` and `metadata`. `HamletModel` (torch tensors on its
device) and `OnnxBackedModel` (numpy arrays, ``array_kind = "numpy"``) implement it structurally; the batcher
picks the array operations that fit with `hamlet_server.array_ops.ops_for`.

- `torch`: `HamletModel.load(path, device)` of a ``.pt`` checkpoint; its `forward` is exactly what
  `HamletModel.predict` computes. Needs torch (``hamlet-server[torch]``).
- `onnx`, ``.onnx`` file (written by ``hamlet-model export-onnx``, verified against PyTorch when it was
  written): run by onnxruntime as it is; its metadata_props carry what ListModels and GetModelMetadata show.
  Needs numpy and onnxruntime only: no torch is imported.
- `onnx`, ``.pt`` checkpoint (torch and onnx installed): loaded with `HamletModel.load`, exported to ONNX and
  verified against PyTorch (`export_verified`: every output within 1e-5 + 1e-5 x |torch|, element-wise; the
  log line says what was measured), and run by onnxruntime on the CPU. On a small CPU this is several times
  faster at small batch; Q-values match PyTorch to a few float32 ULPs (trained demo models: <= 2.7e-5
  absolute, <= 1e-6 relative), not bit for bit, so greedy actions agree except on near-ties.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hamlet_server.artifacts import VerifiedExport

if TYPE_CHECKING:
    from townlet.inference.model import HamletModel
    from townlet.inference.onnx_runtime import OnnxModel

__all__ = [
    "BACKENDS",
    "Backend",
    "Hidden",
    "MissingTorchError",
    "OnnxBackedModel",
    "load_backend",
    "load_onnx_file",
    "resolve_backend",
    "serving_device",
]

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnx")

Hidden = tuple[Any, Any]
"""LSTM state ``(h, c)``, each ``[1, B, H]`` in the backend's arrays (torch on its device, or numpy)."""


class MissingTorchError(RuntimeError):
    """A ``.pt`` checkpoint, the torch backend or a CUDA device was asked of a server installed without torch."""


class Backend(Protocol):
    """What the batcher and the canary run for one model version (`HamletModel`, `OnnxBackedModel`).

    `forward` is the trusted fast path: no validation, no sampling. The server calls it inside its array
    kind's inference context (torch: ``inference_mode``); a backend must give the same answer there as outside.
    A backend whose arrays are numpy says so with ``array_kind = "numpy"`` (see `hamlet_server.array_ops`).
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
    def device(self) -> Any: ...  # "cpu" or a torch.device
    @property
    def num_parameters(self) -> int: ...
    @property
    def metadata(self) -> dict[str, Any]: ...

    def forward(self, obs: Any, hidden: Hidden | None = None) -> tuple[Any, Hidden | None]:
        """``obs [B, obs_dim]`` float32 on `device`, ``hidden`` (h, c) ``[1, B, H]`` or None (zeros) ->
        ``(q [B, A], hidden')``; ``hidden'`` is None for a feed-forward backend."""
        ...


class OnnxBackedModel:
    """An onnxruntime session doing the forward on numpy arrays (CPU), with the checkpoint's metadata."""

    array_kind = "numpy"

    def __init__(
        self, onnx_model: OnnxModel, metadata: dict[str, Any], onnx_export: VerifiedExport | None = None
    ) -> None:
        self.onnx_model = onnx_model
        """The onnxruntime session's model (`OnnxModel`): its ``predict`` draws what a seeded request draws."""
        self._metadata = {**metadata, "backend": "onnxruntime"}
        self.onnx_export = onnx_export
        """The verified file this session runs, kept for clients that fetch it (`hamlet_server.artifacts`)."""
        self.obs_dim = int(onnx_model.obs_dim)
        self.action_dim = int(onnx_model.action_dim)
        self.is_recurrent = bool(onnx_model.is_recurrent)
        self.hidden_dim = onnx_model.hidden_dim
        self.num_parameters = int(metadata.get("num_parameters") or 0)
        self.device = "cpu"
        self.forward = onnx_model.forward  # numpy in, numpy out: nothing to convert

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def serving_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu`` (``cpu`` without torch); other names as given
    (normalised by torch when it is installed). Imports torch only when it is installed and ``device`` is not
    ``cpu``."""
    if device == "cpu" or (device == "auto" and not _installed("torch")):
        return "cpu"
    if not _installed("torch"):
        raise MissingTorchError(
            f"--device {device} needs torch, which this server is installed without: use --device cpu, or "
            "install hamlet-server[torch]"
        )
    from townlet.inference.model import resolve_device

    return str(resolve_device(device))


def resolve_backend(backend: str, device: str) -> str:
    """``auto`` -> ``onnx`` on the CPU when onnxruntime is installed, with onnx to export ``.pt`` checkpoints or
    without torch (faster at the small batches a server mostly sees), else ``torch`` (any device, and CUDA);
    ``torch`` and ``onnx`` are returned as given."""
    if backend != "auto":
        return backend
    on_cpu = device.partition(":")[0] == "cpu"
    exports = _installed("onnx") or not _installed("torch")
    return "onnx" if on_cpu and _installed("onnxruntime") and exports else "torch"


def load_backend(path: Path, device: str, backend: str = "torch", threads: int = 1) -> Backend:
    """Load `path` (``.pt`` or ``.onnx``) for serving with `backend` ("torch" or "onnx") on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    path = Path(path)
    if backend == "onnx" and device.partition(":")[0] != "cpu":
        raise ValueError(f"the onnx backend runs on the CPU; got device {device!r} (use --backend torch for CUDA)")
    if path.suffix == ".onnx":
        if backend != "onnx":
            raise ValueError(
                f"{path.name} is an ONNX export, which only --backend onnx serves (this server runs --backend "
                f"{backend}); start it with --backend onnx, or put the .pt checkpoint beside it"
            )
        return load_onnx_file(path, threads)
    if not _installed("torch"):
        raise MissingTorchError(
            f"{path.name} is a PyTorch checkpoint and this server is installed without torch: install "
            "hamlet-server[torch] (and [onnx] to serve it with onnxruntime), or serve its ONNX export "
            "(`hamlet-model export-onnx`, a model_epNNNNN.onnx file)"
        )
    from townlet.inference import HamletModel

    if backend == "torch":
        return HamletModel.load(path, device=device)
    return _export_and_load(HamletModel.load(path, device="cpu"), path, threads)


def _export_and_load(model: HamletModel, path: Path, threads: int) -> OnnxBackedModel:
    """A `.pt` checkpoint served by onnxruntime: export, verify against PyTorch, then load the verified file."""
    from townlet.inference.onnx_export import export_verified
    from townlet.inference.onnx_runtime import OnnxModel

    with tempfile.TemporaryDirectory(prefix="hamlet-onnx-") as tmp:
        onnx_path, report = export_verified(model, Path(tmp) / "model.onnx")
        onnx_model = OnnxModel(onnx_path, num_threads=threads)  # the session holds the graph; the file can go
        export = VerifiedExport(onnx_path.read_bytes(), report.atol, report.rtol, report.brief())
    log.info("%s: exported to ONNX and verified against PyTorch (%s); serving with onnxruntime",
             path.name, report.brief())  # fmt: skip
    return OnnxBackedModel(onnx_model, model.metadata, export)


def load_onnx_file(path: Path, threads: int = 1) -> OnnxBackedModel:
    """An ``.onnx`` file written by ``hamlet-model export-onnx``, served as it is (no torch).

    Its metadata comes from the file's metadata_props: the dims, the checkpoint's metadata the exporter
    recorded (``checkpoint_metadata``: episode, epsilon, created_at, ...), and the sha256 of the ``.onnx`` file
    itself (the checkpoint's is ``checkpoint_sha256``). Raises `CheckpointError` for a file that is not a Hamlet
    export.
    """
    from townlet.inference.onnx_runtime import OnnxModel

    onnx_model = OnnxModel(path, num_threads=threads)
    data = path.read_bytes()
    meta = onnx_file_metadata(onnx_model.metadata, data)
    verification = f"served as exported: {path.name} was verified against PyTorch by `hamlet-model export-onnx`"
    export = VerifiedExport(data, 0.0, 0.0, verification)  # the tolerance it met is not recorded in the file
    log.info("%s: ONNX export (from %s), serving with onnxruntime", path.name, meta.get("source_format"))
    return OnnxBackedModel(onnx_model, meta, export)


def onnx_file_metadata(props: dict[str, Any], data: bytes) -> dict[str, Any]:
    """GetModelMetadata's view of an export's parsed metadata_props (`OnnxModel.metadata`) and its bytes."""
    recorded = json.loads(props.get("checkpoint_metadata") or "{}")
    meta: dict[str, Any] = {key: value for key, value in recorded.items() if value is not None}
    episode = str(props.get("episode") or "")
    meta.update(
        format_version=str(props["format"]),
        source_format=props.get("source_format"),
        network_type=props["network_type"],
        obs_dim=props["obs_dim"],
        action_dim=props["action_dim"],
        hidden_dim=props.get("hidden_dim"),
        episode=int(episode) if episode.isdigit() else meta.get("episode"),
        sha256=hashlib.sha256(data).hexdigest(),
        checkpoint_sha256=props.get("checkpoint_sha256"),
        opset=props.get("opset"),
        exporter_torch_version=props.get("torch_version"),
    )
    if str(props.get("num_parameters") or "none").isdigit():
        meta["num_parameters"] = int(props["num_parameters"])
    return meta


if TYPE_CHECKING:

    def _implements_backend(torch_model: HamletModel, onnx_model: OnnxBackedModel) -> tuple[Backend, Backend]:
        """Never called: mypy checks here that both backends implement `Backend`."""
        return torch_model, onnx_model
