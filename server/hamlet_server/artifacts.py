"""Model artifacts: a served version's verified ONNX export, handed to clients that run the policy themselves.

    store = ArtifactStore()
    artifact = await store.get(served)            # the export of a loaded version (made once, then cached)
    for offset, data in artifact.chunks(1 << 20):  # what GetModelArtifact streams after its info message
        ...

Where the bytes come from:

- ``--backend onnx``: the version was exported and verified against PyTorch when it loaded
  (`hamlet_server.backends.load_backend`); the backend keeps that file's bytes and they are handed out as is.
- ``--backend torch`` (any device): the first request exports a CPU copy with
  `townlet.inference.onnx_export.export_verified` on a worker thread (one export per version at a time,
  however many clients ask), and the result is cached per loaded file: a file that changes on disk is a new
  entry. The cache keeps the `max_entries` most recently asked versions (an L2 export is 2.6 MB, an L1 one
  0.1 MB).
- Anything else (a backend without a `HamletModel` behind it), or an export that does not verify:
  `ExportUnavailableError` (FAILED_PRECONDITION ``EXPORT_UNAVAILABLE`` at the RPC boundary).

The sha256 sent with an artifact is computed here, over exactly the bytes that are streamed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the backends import this module's VerifiedExport; the repository imports the backends
    from hamlet_client.proto import model_pb2
    from hamlet_server.repository import ModelRepository, ServedModel

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "ArtifactStore",
    "BadChunkSizeError",
    "ExportUnavailableError",
    "ModelArtifact",
    "VerifiedExport",
    "artifact_responses",
    "chunk_size",
    "export_model",
]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 1 << 20
"""Bytes per GetModelArtifact chunk when the request names none (1 MiB)."""
MAX_CHUNK_BYTES = 3 << 20
"""Largest chunk a request may ask for (3 MiB: with its envelope still under gRPC's default 4 MiB limit)."""
MIN_CHUNK_BYTES = 1 << 10
_ENVELOPE = 1 << 10  # room for a chunk message's other fields under the server's message size limit


class BadChunkSizeError(ValueError):
    """The request's chunk_bytes is outside what this server sends (maps to INVALID_ARGUMENT ``BAD_ARGUMENT``)."""


class ExportUnavailableError(RuntimeError):
    """The version cannot be handed out as ONNX: no exportable model behind its backend, or the export
    does not reproduce PyTorch within the tolerance (maps to FAILED_PRECONDITION ``EXPORT_UNAVAILABLE``)."""


@dataclass(frozen=True)
class VerifiedExport:
    """An ONNX file's bytes and what its verification against PyTorch measured."""

    data: bytes
    atol: float
    rtol: float
    verification: str
    """One line: max abs / rel diff and the share of the tolerance used (`OnnxVerificationReport.brief`)."""


@dataclass(frozen=True)
class ModelArtifact:
    """The verified ONNX export of one model version, ready to stream."""

    name: str
    version: int
    data: bytes
    sha256: str
    """Lower-case hex sha256 of ``data``."""
    obs_dim: int
    action_dim: int
    hidden_dim: int
    """0 for a feed-forward network."""
    atol: float
    rtol: float
    verification: str
    format: str = "hamlet_onnx_v1"

    @property
    def recurrent(self) -> bool:
        return self.hidden_dim > 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("obs", "hidden_h", "hidden_c") if self.recurrent else ("obs",)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("q_values", "new_hidden_h", "new_hidden_c") if self.recurrent else ("q_values",)

    @property
    def size(self) -> int:
        return len(self.data)

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
        """``(offset, data)`` pieces of at most ``chunk_bytes`` covering the file in order."""
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes: expected an int >= 1, got {chunk_bytes}")
        view = memoryview(self.data)
        for offset in range(0, len(self.data), chunk_bytes):
            yield offset, bytes(view[offset : offset + chunk_bytes])


def export_model(model: Any) -> VerifiedExport:
    """Export a `HamletModel` to ONNX and verify it against PyTorch (seconds; run it on a worker thread).

    Raises:
        ExportUnavailableError: ``model`` is not a `HamletModel`, onnx is not installed, or the export
        does not verify.
    """
    try:
        from townlet.inference import HamletModel
        from townlet.inference.onnx_export import ExportVerificationError, export_verified
    except ImportError as exc:  # the onnx extra is missing
        raise ExportUnavailableError(
            f"this server cannot export ONNX ({exc}); install hamlet-server[onnx] on the server"
        ) from None
    if not isinstance(model, HamletModel):
        raise ExportUnavailableError(
            f"the version is served by a {type(model).__name__}, which has no PyTorch model to export to ONNX"
        )
    with tempfile.TemporaryDirectory(prefix="hamlet-artifact-") as tmp:
        try:
            path, report = export_verified(model, Path(tmp) / "model.onnx")
        except ExportVerificationError as exc:
            raise ExportUnavailableError(
                "the ONNX export does not reproduce the PyTorch model within the tolerance, so it is not handed "
                f"out: {'; '.join(exc.problems)}; use remote inference for this version"
            ) from None
        data = path.read_bytes()
    return VerifiedExport(data, report.atol, report.rtol, report.brief())


class ArtifactStore:
    """Verified ONNX exports of served versions, made at most once per loaded file and kept LRU.

    Args:
        max_entries: exports kept in memory (most recently asked first).
        exporter: makes a `VerifiedExport` of a backend's model (`export_model`; tests pass fakes).
    """

    def __init__(self, max_entries: int = 8, exporter: Callable[[Any], VerifiedExport] = export_model) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries: expected an int >= 1, got {max_entries}")
        self._max_entries = max_entries
        self._exporter = exporter
        self._cache: OrderedDict[tuple[str, int, tuple[int, int]], ModelArtifact] = OrderedDict()
        self._locks: dict[tuple[str, int, tuple[int, int]], asyncio.Lock] = {}
        self._failed: dict[tuple[str, int, tuple[int, int]], str] = {}  # not exported again until the file changes
        self.exports = 0
        """How many exports this store ran (a cached artifact costs none)."""

    def __len__(self) -> int:
        return len(self._cache)

    async def get(self, served: ServedModel) -> ModelArtifact:
        """The artifact of ``served`` (a loaded version the caller holds a reference to).

        Raises:
            ExportUnavailableError: the version cannot be exported, or its export does not verify.
        """
        key = (served.name, served.version, served.file.signature)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._failed:
                raise ExportUnavailableError(self._failed[key])
            artifact = self._cache.get(key)
            if artifact is None:
                export = _kept_export(served.model)
                if export is None:
                    export = await self._export(key, served.model)
                    log.info("model %r version %d: exported to ONNX for clients (%s)", served.name,
                             served.version, export.verification)  # fmt: skip
                artifact = _artifact(served, export)
                self._cache[key] = artifact
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                evicted, _ = self._cache.popitem(last=False)
                self._locks.pop(evicted, None)
        return artifact

    async def _export(self, key: tuple[str, int, tuple[int, int]], model: Any) -> VerifiedExport:
        self.exports += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._exporter, model)
        except ExportUnavailableError as exc:
            self._failed[key] = str(exc)
            log.warning("model %r version %d: not handed out as ONNX: %s", key[0], key[1], exc)
            raise


def _kept_export(model: Any) -> VerifiedExport | None:
    """The export an ONNX-backed model made (and verified) at load, if it kept one."""
    export = getattr(model, "onnx_export", None)
    return export if isinstance(export, VerifiedExport) else None


def _artifact(served: ServedModel, export: VerifiedExport) -> ModelArtifact:
    return ModelArtifact(
        name=served.name,
        version=served.version,
        data=export.data,
        sha256=hashlib.sha256(export.data).hexdigest(),
        obs_dim=served.obs_dim,
        action_dim=served.action_dim,
        hidden_dim=served.hidden_dim if served.is_recurrent else 0,
        atol=export.atol,
        rtol=export.rtol,
        verification=export.verification,
    )


def chunk_size(requested: int, max_message_bytes: int) -> int:
    """The chunk size to send: ``requested`` bytes (0: `DEFAULT_CHUNK_BYTES`), within what fits a message.

    Raises:
        BadChunkSizeError: ``requested`` is neither 0 nor within ``MIN_CHUNK_BYTES`` .. the limit.
    """
    limit = min(MAX_CHUNK_BYTES, max_message_bytes - _ENVELOPE)
    if requested == 0:
        return min(DEFAULT_CHUNK_BYTES, limit)
    if not MIN_CHUNK_BYTES <= requested <= limit:
        raise BadChunkSizeError(
            f"chunk_bytes: expected 0 (the default, {min(DEFAULT_CHUNK_BYTES, limit)}) or {MIN_CHUNK_BYTES}..{limit} "
            f"bytes (this server's message size limit less {_ENVELOPE} bytes, at most {MAX_CHUNK_BYTES}), "
            f"got {requested}; leave it 0"
        )
    return requested


async def artifact_responses(
    store: ArtifactStore,
    repository: ModelRepository,
    request: Any,
    *,
    max_message_bytes: int,
    metadata: Callable[[ServedModel], model_pb2.ModelMetadata],
) -> list[Any]:
    """The GetModelArtifact answer to ``request``: one ``info`` response, then the ``chunk`` responses.

    ``metadata`` renders the version's checkpoint metadata (the servicer's `metadata_to_proto`). Raises what
    `ModelRepository.acquire` and `ArtifactStore.get` raise, and `BadChunkSizeError`.
    """
    from hamlet_client.proto import inference_service_pb2 as pb

    size = chunk_size(request.chunk_bytes, max_message_bytes)
    served = await repository.acquire(request.model, request.version if request.HasField("version") else None)
    try:
        artifact = await store.get(served)
        info = pb.ModelArtifactInfo(
            model=artifact.name, version=artifact.version, format=artifact.format, sha256=artifact.sha256,
            size_bytes=artifact.size, obs_dim=artifact.obs_dim, action_dim=artifact.action_dim,
            hidden_dim=artifact.hidden_dim, recurrent=artifact.recurrent, atol=artifact.atol, rtol=artifact.rtol,
            input_names=artifact.input_names, output_names=artifact.output_names, metadata=metadata(served),
            verification=artifact.verification,
        )  # fmt: skip
    finally:
        served.release()
    responses = [pb.GetModelArtifactResponse(info=info)]
    for offset, data in artifact.chunks(size):
        responses.append(pb.GetModelArtifactResponse(chunk=pb.ModelArtifactChunk(offset=offset, data=data)))
    return responses
