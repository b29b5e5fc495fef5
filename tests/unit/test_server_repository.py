"""ModelRepository without a network: layout scan, newest-servable-wins (forward and back), refusal of broken,
diverged and canary-failing files (read once per change), reload, unload, path-free errors."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from hamlet_server.repository import (
    ModelLoadError,
    ModelRepository,
    UnknownModelError,
    UnknownVersionError,
    scan_models,
)
from townlet.agent.networks import SimpleQNetwork
from townlet.inference import HamletModel, save_inference_checkpoint

torch.set_num_threads(1)


def _write(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_inference_checkpoint(HamletModel(SimpleQNetwork(obs_dim=8, action_dim=3)), path)
    return path


def test_scan_understands_the_layout(tmp_path):
    _write(tmp_path / "a" / "model_ep00010.pt")
    _write(tmp_path / "a" / "checkpoint_ep00010.pt")  # same episode: the inference file wins
    _write(tmp_path / "a" / "checkpoint_ep00020.pt")
    (tmp_path / "a" / "notes.pt").write_bytes(b"x")  # no episode number: not a version
    (tmp_path / "a" / ".model_ep00030.pt.tmp").write_bytes(b"x")
    _write(tmp_path / "single_ep00007.pt")
    _write(tmp_path / "plain.pt")
    found = scan_models(tmp_path)
    assert sorted(found) == ["a", "plain", "single"]
    assert sorted(found["a"]) == [10, 20] and found["a"][10].path.name == "model_ep00010.pt"
    assert list(found["single"]) == [7] and list(found["plain"]) == [0]


def test_scan_finds_onnx_exports_and_ranks_them_by_backend(tmp_path):
    _write(tmp_path / "a" / "model_ep00010.pt")
    (tmp_path / "a" / "model_ep00010.onnx").write_bytes(b"x")  # the same episode, exported
    (tmp_path / "a" / "model_ep00011.onnx").write_bytes(b"x")  # an export alone
    (tmp_path / "a" / ".model_ep00012.onnx.verifying.onnx").write_bytes(b"x")  # an export being verified
    (tmp_path / "solo_ep00003.onnx").write_bytes(b"x")
    under_onnx = scan_models(tmp_path, prefer_onnx=True)
    assert sorted(under_onnx) == ["a", "solo"] and list(under_onnx["solo"]) == [3]
    assert {v: f.path.name for v, f in under_onnx["a"].items()} == {10: "model_ep00010.onnx", 11: "model_ep00011.onnx"}
    under_torch = scan_models(tmp_path)  # the torch backend cannot run an export: the checkpoint wins
    assert under_torch["a"][10].path.name == "model_ep00010.pt"


@pytest.fixture
def executor():
    ex = ThreadPoolExecutor(1)
    yield ex
    ex.shutdown()


async def test_newest_loadable_version_serves_and_broken_files_are_skipped(tmp_path, executor):
    _write(tmp_path / "m" / "model_ep00001.pt")
    (tmp_path / "m" / "model_ep00002.pt").write_bytes(b"garbage")
    failures = []
    repo = ModelRepository(tmp_path, "cpu", executor, on_load_failure=lambda *f: failures.append(f))
    await repo.refresh()
    assert repo.latest("m").version == 1 and failures == [("m", "load_error")]
    await repo.refresh()
    assert failures == [("m", "load_error")]  # an unchanged bad file is not retried
    _write(tmp_path / "m" / "model_ep00002.pt", seed=3)
    await repo.refresh()
    assert repo.latest("m").version == 2 and repo.loaded_versions("m") == [2]
    with pytest.raises(UnknownModelError, match="available: \\['m'\\]"):
        await repo.acquire("other")
    with pytest.raises(UnknownVersionError, match="versions: \\[1, 2\\]"):
        await repo.acquire("m", 5)
    await repo.close()


async def test_held_versions_stay_until_released_then_unload(tmp_path, executor):
    _write(tmp_path / "m" / "model_ep00001.pt")
    repo = ModelRepository(tmp_path, "cpu", executor)
    await repo.refresh()
    held = await repo.acquire("m")
    _write(tmp_path / "m" / "model_ep00005.pt", seed=1)
    await repo.refresh()
    assert repo.latest("m").version == 5 and repo.loaded_versions("m") == [1, 5]
    held.release()
    await repo.refresh()
    assert repo.loaded_versions("m") == [5]
    old = await repo.acquire("m", 1)  # an explicit older version loads on demand
    assert old.version == 1 and repo.loaded_versions("m") == [1, 5]
    old.release()
    await repo.close()


async def test_changed_file_is_reloaded_beside_the_old_copy(tmp_path, executor):
    path = _write(tmp_path / "m" / "model_ep00001.pt", seed=0)
    repo = ModelRepository(tmp_path, "cpu", executor)
    await repo.refresh()
    held = await repo.acquire("m")
    _write(path, seed=9)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    await repo.refresh()
    fresh = repo.latest("m")
    assert fresh is not held and fresh.version == 1 and repo.loaded_count() == 2
    held.release()
    await repo.refresh()
    assert repo.loaded_count() == 1
    await repo.close()


async def test_a_model_with_no_loadable_file_says_so(tmp_path, executor):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_ep00001.pt").write_bytes(b"garbage")
    repo = ModelRepository(tmp_path, "cpu", executor)
    await repo.refresh()
    with pytest.raises(ModelLoadError, match="no servable version"):
        await repo.acquire("m")
    await repo.close()


def _write_weights(path: Path, fill: float) -> Path:
    """A checkpoint whose every weight is ``fill``: NaN (what a diverged run writes) or huge (finite, but the
    forward overflows to Inf)."""
    network = SimpleQNetwork(obs_dim=8, action_dim=3)
    with torch.no_grad():
        for param in network.parameters():
            param.fill_(fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_inference_checkpoint(HamletModel(network), path)
    return path


class _CountingLoader:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path: Path, device: str) -> HamletModel:
        self.calls.append(path.name)
        return HamletModel.load(path, device=device)


async def test_a_nan_newest_version_is_never_served_and_not_reread(tmp_path, executor):
    _write(tmp_path / "m" / "model_ep00001.pt")
    _write_weights(tmp_path / "m" / "model_ep00002.pt", float("nan"))
    failures, loader = [], _CountingLoader()
    repo = ModelRepository(tmp_path, "cpu", executor, loader=loader, on_load_failure=lambda *f: failures.append(f))
    await repo.refresh()
    assert repo.latest("m").version == 1
    assert failures == [("m", "load_error")] and loader.calls == ["model_ep00002.pt", "model_ep00001.pt"]
    await repo.refresh()
    assert loader.calls == ["model_ep00002.pt", "model_ep00001.pt"]  # nothing changed: nothing read
    with pytest.raises(ModelLoadError, match=r"version 2 is not servable: .*non-finite weights") as caught:
        await repo.acquire("m", 2)
    assert str(tmp_path) not in str(caught.value)  # the client-facing message carries no server path
    assert "net.0.weight: 1024 of 1024 values are NaN" in str(caught.value)
    with pytest.raises(ModelLoadError):
        await repo.acquire("m", 2)
    assert len(loader.calls) == 2  # asking for a refused version twice re-reads nothing
    await repo.close()


async def test_a_canary_failure_is_refused_and_counted(tmp_path, executor):
    _write(tmp_path / "m" / "model_ep00001.pt")
    _write_weights(tmp_path / "m" / "model_ep00002.pt", 1e30)  # finite weights, Inf Q-values
    failures = []
    repo = ModelRepository(tmp_path, "cpu", executor, on_load_failure=lambda *f: failures.append(f))
    await repo.refresh()
    assert repo.latest("m").version == 1 and failures == [("m", "canary")]
    with pytest.raises(ModelLoadError, match="refused: canary forward on zero observations at batch 1"):
        await repo.acquire("m", 2)
    await repo.close()


async def test_latest_rolls_forward_and_back_with_the_files(tmp_path, executor):
    _write(tmp_path / "m" / "model_ep00001.pt")
    repo = ModelRepository(tmp_path, "cpu", executor)
    await repo.refresh()
    assert repo.latest("m").version == 1
    newest = _write(tmp_path / "m" / "model_ep00003.pt", seed=2)
    await repo.refresh()
    assert repo.latest("m").version == 3 and repo.loaded_versions("m") == [3]
    pinned = await repo.acquire("m")  # a running episode on version 3
    newest.unlink()
    await repo.refresh()
    assert repo.latest("m").version == 1  # rolled back: version 1 is loaded again
    assert repo.loaded_versions("m") == [1, 3] and pinned.version == 3  # the episode keeps its version
    pinned.release()
    await repo.refresh()
    assert repo.loaded_versions("m") == [1]
    _write_weights(tmp_path / "m" / "model_ep00004.pt", float("nan"))
    await repo.refresh()
    assert repo.latest("m").version == 1
    _write(tmp_path / "m" / "model_ep00004.pt", seed=4)  # the same name, now good: read again and promoted
    path = tmp_path / "m" / "model_ep00004.pt"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    await repo.refresh()
    assert repo.latest("m").version == 4
    await repo.close()


async def test_a_good_version_replaced_by_a_bad_file_is_no_longer_served(tmp_path, executor):
    _write(tmp_path / "m" / "model_ep00001.pt")
    path = _write(tmp_path / "m" / "model_ep00002.pt", seed=1)
    repo = ModelRepository(tmp_path, "cpu", executor)
    await repo.refresh()
    assert repo.latest("m").version == 2
    _write_weights(path, float("nan"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    await repo.refresh()
    assert repo.latest("m").version == 1
    with pytest.raises(ModelLoadError, match="not servable"):
        await repo.acquire("m", 2)
    await repo.close()
