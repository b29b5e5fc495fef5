"""Model artifacts on the client: fetch a version's ONNX export (``GetModelArtifact``) and check it.

    artifact = fetch_artifact(stub, "townlet-L2-lstm", None, metadata=..., timeout=60.0)
    artifact.data, artifact.sha256, artifact.obs_dim, artifact.recurrent   # checked before it is returned

`assemble_artifact` is the pure part: it takes the stream's responses in order and returns a `ModelArtifact`
only when the first is the info, the chunks are contiguous from offset 0, their total is the announced size
and their sha256 is the announced one; anything else is an `ArtifactIntegrityError`. No numpy, no
onnxruntime here: `hamlet_client.local` runs the bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from hamlet_client.errors import ArtifactIntegrityError, from_rpc_error
from hamlet_client.proto import inference_service_pb2 as service_pb2
from hamlet_client.results import ModelMetadata, metadata_from_proto

__all__ = ["ARTIFACT_FORMAT", "ModelArtifact", "assemble_artifact", "fetch_artifact"]

ARTIFACT_FORMAT = "hamlet_onnx_v1"
"""The only artifact format this client runs: an ONNX file with Hamlet's metadata_props."""


@dataclass(frozen=True)
class ModelArtifact:
    """A model version's verified ONNX export, as the server described it, with the bytes that matched."""

    model: str
    version: int
    format: str
    sha256: str
    """Lower-case hex sha256 of ``data`` (checked)."""
    data: bytes
    obs_dim: int
    action_dim: int
    hidden_dim: int
    """LSTM width; 0 for a feed-forward network."""
    atol: float
    """The server verified the export against PyTorch: every output within ``atol + rtol * |torch|``."""
    rtol: float
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    metadata: ModelMetadata
    """The checkpoint metadata of the version (what `HamletClient.metadata` returns)."""
    verification: str
    """What the server measured when it verified the export."""

    @property
    def recurrent(self) -> bool:
        """True for the CNN + LSTM network (it carries hidden state)."""
        return self.hidden_dim > 0


def assemble_artifact(responses: Iterable[service_pb2.GetModelArtifactResponse]) -> ModelArtifact:
    """The artifact carried by a GetModelArtifact stream's responses, checked.

    Raises:
        ArtifactIntegrityError: no info first, a second info, a chunk out of order, more or fewer bytes
        than announced, a sha256 that differs from the announced one, or an unknown format.
    """
    iterator = iter(responses)
    first = next(iterator, None)
    if first is None or first.WhichOneof("kind") != "info":
        got = "nothing" if first is None else first.WhichOneof("kind")
        raise ArtifactIntegrityError(f"model artifact: expected the info message first, got {got}")
    info = first.info
    if info.format != ARTIFACT_FORMAT:
        raise ArtifactIntegrityError(
            f"model artifact: format {info.format!r}, this client runs only {ARTIFACT_FORMAT!r}; upgrade hamlet-client"
        )
    data = _read_chunks(iterator, info)
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256.lower():
        raise ArtifactIntegrityError(
            f"model artifact {info.model!r} version {info.version}: the bytes hash to sha256 {digest[:16]}..., the "
            f"server announced {info.sha256[:16]}...; the file was changed in transit or on the server, so it "
            "is not run (fetch it again, or use remote inference)"
        )
    return ModelArtifact(
        model=info.model, version=info.version, format=info.format, sha256=digest, data=data,
        obs_dim=info.obs_dim, action_dim=info.action_dim, hidden_dim=info.hidden_dim, atol=info.atol,
        rtol=info.rtol, input_names=tuple(info.input_names), output_names=tuple(info.output_names),
        metadata=metadata_from_proto(info.metadata), verification=info.verification,
    )  # fmt: skip


def _read_chunks(iterator: Any, info: service_pb2.ModelArtifactInfo) -> bytes:
    """The chunks' bytes, contiguous from offset 0 and exactly ``info.size_bytes`` long."""
    where = f"model artifact {info.model!r} version {info.version}"
    parts: list[bytes] = []
    received = 0
    for response in iterator:
        if response.WhichOneof("kind") != "chunk":
            raise ArtifactIntegrityError(
                f"{where}: expected only chunks after the info, got {response.WhichOneof('kind')}"
            )
        chunk = response.chunk
        if chunk.offset != received:
            raise ArtifactIntegrityError(f"{where}: a chunk starts at byte {chunk.offset}, expected {received}")
        received += len(chunk.data)
        if received > info.size_bytes:
            raise ArtifactIntegrityError(f"{where}: more than the announced {info.size_bytes} bytes arrived")
        parts.append(chunk.data)
    if received != info.size_bytes:
        raise ArtifactIntegrityError(f"{where}: {received} of the announced {info.size_bytes} bytes arrived")
    return b"".join(parts)


def fetch_artifact(stub: Any, model: str, version: int | None, *, metadata: Any, timeout: float) -> ModelArtifact:
    """Fetch and check a model version's artifact (``model`` "" = the server's default; ``version`` None = latest).

    Raises:
        ModelNotFoundError, FailedPreconditionError (the version cannot be exported), UnauthenticatedError, ...:
        the server refused. ArtifactIntegrityError: the bytes failed a check.
    """
    request = service_pb2.GetModelArtifactRequest(model=model, version=version)
    call = stub.GetModelArtifact(request, timeout=timeout, metadata=metadata)
    try:
        return assemble_artifact(call)
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
    finally:
        call.cancel()
