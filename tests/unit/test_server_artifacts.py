"""`hamlet_server.artifacts` without a network: exports made once per loaded file, kept exports reused,
unexportable versions refused with FAILED_PRECONDITION, chunking and the chunk size rule."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from hamlet_server.artifacts import (
    DEFAULT_CHUNK_BYTES,
    MAX_CHUNK_BYTES,
    ArtifactStore,
    BadChunkSizeError,
    ExportUnavailableError,
    ModelArtifact,
    VerifiedExport,
    chunk_size,
    export_model,
)
from hamlet_server.backends import load_backend
from hamlet_server.repository import ModelFile, ServedModel
from hamlet_server.status import status_for
from townlet.agent.networks import SimpleQNetwork
from townlet.inference import HamletModel, save_inference_checkpoint
from townlet.inference.onnx_runtime import OnnxModel


def _served(model: Any, name: str = "m", version: int = 3, signature: tuple[int, int] = (1, 2)) -> ServedModel:
    return ServedModel(ModelFile(name, version, Path(f"/models/{name}/model_ep{version}.pt"), signature), model, None)  # type: ignore[arg-type]


@pytest.fixture
def mlp() -> HamletModel:
    torch.manual_seed(0)
    return HamletModel(SimpleQNetwork(obs_dim=91, action_dim=6))


async def test_a_torch_version_is_exported_once_however_many_clients_ask(mlp: HamletModel, tmp_path: Path) -> None:
    calls: list[Any] = []

    def exporter(model: Any) -> VerifiedExport:
        calls.append(model)
        return export_model(model)

    store = ArtifactStore(exporter=exporter)
    served = _served(mlp)
    first, second = await asyncio.gather(store.get(served), store.get(served))
    assert first is second and len(calls) == 1 and store.exports == 1
    assert first.sha256 == hashlib.sha256(first.data).hexdigest()
    assert (first.obs_dim, first.action_dim, first.hidden_dim, first.recurrent) == (91, 6, 0, False)
    path = tmp_path / "got.onnx"
    path.write_bytes(first.data)
    q = OnnxModel(path).predict(torch.ones(2, 91).numpy()).q_values
    torch.testing.assert_close(torch.from_numpy(q), mlp.predict(torch.ones(2, 91)).q_values, atol=1e-5, rtol=1e-5)

    changed = _served(mlp, signature=(9, 9))  # the file changed on disk: a new entry
    await store.get(changed)
    assert store.exports == 2


async def test_the_onnx_backend_export_is_handed_out_without_exporting_again(mlp: HamletModel, tmp_path: Path) -> None:
    path = tmp_path / "model_ep00003.pt"
    save_inference_checkpoint(mlp, path)
    backend = load_backend(path, "cpu", backend="onnx")

    def refuse(model: Any) -> VerifiedExport:
        raise AssertionError("the kept export must be used")

    artifact = await ArtifactStore(exporter=refuse).get(_served(backend))
    assert artifact.data == backend.onnx_export.data  # type: ignore[attr-defined]
    assert "of the tolerance" in artifact.verification


async def test_a_backend_without_a_pytorch_model_is_refused_and_not_retried() -> None:
    class Opaque:
        obs_dim, action_dim, is_recurrent, hidden_dim = 4, 2, False, None

    store = ArtifactStore()
    with pytest.raises(ExportUnavailableError, match="has no PyTorch model to export") as caught:
        await store.get(_served(Opaque()))
    assert store.exports == 1
    with pytest.raises(ExportUnavailableError):
        await store.get(_served(Opaque()))
    assert store.exports == 1  # remembered until the file changes
    code, _, reason = status_for(caught.value)
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "EXPORT_UNAVAILABLE")


async def test_the_store_keeps_the_most_recently_asked_versions(mlp: HamletModel) -> None:
    export = VerifiedExport(b"onnx-bytes", 1e-5, 1e-5, "ok")
    store = ArtifactStore(max_entries=2, exporter=lambda model: export)
    for version in (1, 2, 1, 3):
        await store.get(_served(mlp, version=version))
    assert len(store) == 2 and store.exports == 3
    await store.get(_served(mlp, version=1))  # kept (asked recently)
    await store.get(_served(mlp, version=2))  # evicted before: exported again
    assert store.exports == 4


def test_chunks_cover_the_file_in_order() -> None:
    artifact = ModelArtifact("m", 1, bytes(range(256)) * 10, "x", 4, 2, 0, 1e-5, 1e-5, "ok")
    chunks = list(artifact.chunks(1000))
    assert [offset for offset, _ in chunks] == [0, 1000, 2000]
    assert b"".join(data for _, data in chunks) == artifact.data
    assert [len(data) for _, data in chunks] == [1000, 1000, 560]


def test_chunk_size_rule() -> None:
    sixteen_mib = 16 << 20
    assert chunk_size(0, sixteen_mib) == DEFAULT_CHUNK_BYTES
    assert chunk_size(0, 1 << 20) == (1 << 20) - 1024  # under a 1 MiB message limit with its envelope
    assert chunk_size(4096, sixteen_mib) == 4096
    assert chunk_size(MAX_CHUNK_BYTES, sixteen_mib) == MAX_CHUNK_BYTES
    for bad in (10, MAX_CHUNK_BYTES + 1):
        with pytest.raises(BadChunkSizeError, match=r"chunk_bytes: expected 0 \(the default") as caught:
            chunk_size(bad, sixteen_mib)
        assert status_for(caught.value)[::2] == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_ARGUMENT")
