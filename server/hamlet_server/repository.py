"""ModelRepository: model name -> loaded versions, kept in step with a directory that training writes into.

Layout: `<root>/<name>/model_epNNNNN.pt`, `checkpoint_epNNNNN.pt` or `model_epNNNNN.onnx` (an export written
by ``hamlet-model export-onnx``; a version is the training episode in the file name), or a single file
`<root>/<name>.pt` / `<name>.onnx` (version = its `_epN` or 0). Of several files of one episode, an inference
checkpoint wins over a training one, and the `.onnx` export wins under ``--backend onnx`` (loads without torch
and without an export) but loses under ``--backend torch`` (which cannot run it).

Promotion: a file is loaded (non-finite weights are refused by the loader), then run through the canary
forward (`hamlet_server.canary`); only a version that passes both is servable. The served "latest" of a
model is always the newest version on disk that is servable: a new good file rolls forward at the next
poll, a deleted or refused newest file rolls back to the previous servable one. A file that fails is logged
once and not read again until its (mtime, size) changes. Running streams keep the version they started on,
even if its file is deleted; a version that is no longer the latest and that nothing holds is unloaded.

Thread model: `scan_and_load()` does the file system work, the loading and the canary (run it on a worker
thread); `apply()` and everything else run on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from hamlet_server.backends import Backend
from hamlet_server.batcher import BatchStats, StepBatcher
from hamlet_server.canary import canary_problem
from hamlet_server.sessions import SlotAllocator
from townlet.inference.errors import UnsafeCheckpointError
from townlet.inference.filenames import CheckpointName, parse_checkpoint_name

__all__ = [
    "ModelLoadError",
    "ModelRepository",
    "ServedModel",
    "UnknownModelError",
    "UnknownVersionError",
    "scan_models",
]

log = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    """No model of that name (maps to NOT_FOUND)."""


class UnknownVersionError(LookupError):
    """The model has no such version (maps to NOT_FOUND)."""


class ModelLoadError(RuntimeError):
    """The requested version's file exists but does not load or was refused (maps to FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class ModelFile:
    name: str
    version: int
    path: Path
    signature: tuple[int, int]  # (mtime_ns, size): a change means "reload"


MODEL_SUFFIXES = (".pt", ".onnx")


def _parse(name: str) -> CheckpointName | None:
    """`parse_checkpoint_name` for ``.pt`` files, and the same rule for ``.onnx`` exports (``model_ep7.onnx``)."""
    if name.endswith(".onnx"):
        return parse_checkpoint_name(name[: -len(".onnx")] + ".pt")
    return parse_checkpoint_name(name)


def _rank(path: Path, prefer_onnx: bool) -> int:
    """Lower wins among files of one version: an inference checkpoint beats a training one; the .onnx export
    comes first under the onnx backend, last under the torch backend."""
    if path.suffix == ".onnx":
        return 0 if prefer_onnx else 3
    parsed = _parse(path.name)
    return 1 if parsed is not None and parsed.is_inference else 2


def scan_models(root: Path, *, prefer_onnx: bool = False) -> dict[str, dict[int, ModelFile]]:
    """What is on disk now: name -> version -> file. Ignores hidden and temporary files.

    File names are read by `townlet.inference.filenames`: inside a model directory only ``<stem>_epN.pt`` and
    ``<stem>_epN.onnx`` files are versions (N); a single file ``<name>_epN.pt`` (or ``.onnx``) is model
    ``name`` version N, any other ``<name>.pt`` is version 0. ``prefer_onnx``: see `_rank`.
    """
    found: dict[str, dict[int, ModelFile]] = {}
    if not root.is_dir():
        return found
    candidates: list[tuple[str, int, Path]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for path in sorted(p for p in entry.iterdir() if p.suffix in MODEL_SUFFIXES):
                if (parsed := _parse(path.name)) is not None:
                    candidates.append((entry.name, parsed.episode, path))
        elif entry.suffix in MODEL_SUFFIXES:
            parsed = _parse(entry.name)
            candidates.append((parsed.stem, parsed.episode, entry) if parsed else (entry.stem, 0, entry))
    for name, version, path in candidates:
        try:
            stat = path.stat()
        except OSError:
            continue
        mf = ModelFile(name, version, path, (stat.st_mtime_ns, stat.st_size))
        current = found.setdefault(name, {}).get(version)
        if current is None or _rank(path, prefer_onnx) < _rank(current.path, prefer_onnx):
            found[name][version] = mf
    return found


class ServedModel:
    """One loaded version: the model, its batcher, its hidden-state rows and a reference count."""

    def __init__(self, file: ModelFile, model: Backend, batcher: StepBatcher) -> None:
        self.file = file
        self.model = model
        self.batcher = batcher
        self.slots = SlotAllocator()
        self.refs = 0

    name = property(lambda self: self.file.name)
    version = property(lambda self: self.file.version)
    is_recurrent = property(lambda self: bool(self.model.is_recurrent))
    device = property(lambda self: self.batcher.device)
    obs_dim = property(lambda self: int(self.model.obs_dim))
    action_dim = property(lambda self: int(self.model.action_dim))
    hidden_dim = property(lambda self: int(self.model.hidden_dim or 0))

    def acquire(self) -> ServedModel:
        self.refs += 1
        return self

    def free_rows(self, slots: list[int]) -> None:
        """Give a closed stream's table rows back; the table shrinks once use falls far enough."""
        if slots:
            self.slots.free(slots)
            self.batcher.compact(lambda: self.slots.high_water)

    def release(self) -> None:
        self.refs = max(0, self.refs - 1)

    def __repr__(self) -> str:
        return f"ServedModel({self.name!r}, version={self.version}, refs={self.refs})"


@dataclass
class _Loaded:
    file: ModelFile
    model: Backend | None = None
    error: str | None = None
    """Why the file is not servable, without server paths (it may reach clients)."""
    reason: str = ""
    """Metric label of a failure: ``load_error`` (unreadable, non-finite weights, ...) or ``canary``."""


def _load_problem(exc: Exception) -> str:
    """Why a file did not load, as a client may read it: a pickle refusal in the server's words (the server
    has no trust flag: the fix is a safe re-save where the file is trusted), else the loader's reason."""
    if isinstance(exc, UnsafeCheckpointError):
        return (
            f"refusing to unpickle: the file references Python globals that weights_only loading does not allow "
            f"({', '.join(exc.globals_needed) or 'unknown'}); the server never unpickles such files and nothing in "
            "it was run. If you trust it, re-save it as a safe checkpoint: hamlet-model migrate --trust (training "
            "checkpoints) or HamletModel.load(path, trust_pickle=True) then save_inference_checkpoint"
        )
    return getattr(exc, "reason", None) or str(exc)


def _default_loader(path: Path, device: str) -> Backend:
    from townlet.inference import HamletModel

    return HamletModel.load(path, device=device)


class ModelRepository:
    """Models under `root`, loaded on `device`; batchers run their forwards on `executor`."""

    def __init__(
        self,
        root: Path,
        device: str,
        executor: Executor | None,
        *,
        max_batch: int = 256,
        max_delay_us: int = 0,
        inline_rows: int = 0,
        default_model: str = "",
        prefer_onnx: bool = False,
        loader: Callable[[Path, str], Backend] = _default_loader,
        on_batch: Callable[[str, BatchStats], None] | None = None,
        on_load_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.device = device
        self._executor = executor
        self._max_batch = max_batch
        self._max_delay_us = max_delay_us
        self._inline_rows = inline_rows
        self._default_model = default_model
        self._prefer_onnx = prefer_onnx
        self._loader = loader
        self._on_batch = on_batch
        self._on_load_failure = on_load_failure
        self._on_disk: dict[str, dict[int, ModelFile]] = {}
        self._loaded: dict[tuple[str, int], ServedModel] = {}
        self._latest: dict[str, int] = {}
        self._failed: dict[Path, tuple[int, int]] = {}
        self._errors: dict[tuple[str, int], str] = {}  # why a refused version is not servable (path-free)
        self._retired: list[ServedModel] = []
        self._lock = asyncio.Lock()

    # ---- queries (event loop) -------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._latest)

    @property
    def default_model(self) -> str:
        if self._default_model:
            return self._default_model
        names = self.names()
        return names[0] if names else ""

    def names_on_disk(self) -> list[str]:
        """Every model with a file on disk, servable or not."""
        return sorted(self._on_disk)

    def versions_on_disk(self, name: str) -> list[int]:
        return sorted(self._on_disk.get(name, {}))

    def listed_versions(self, name: str) -> list[int]:
        """The versions on disk that ListModels offers: all but those refused (failed to load or the canary),
        until their file changes. A version not yet loaded is listed: it is refused when first asked for."""
        files = self._on_disk.get(name, {})
        return sorted(v for v, file in files.items() if self._failed.get(file.path) != file.signature)

    def loaded_versions(self, name: str) -> list[int]:
        held = {m.version for m in self._retired if m.name == name}
        return sorted({v for (n, v) in self._loaded if n == name} | held)

    def latest(self, name: str) -> ServedModel:
        name = name or self.default_model
        if name not in self._latest:
            raise UnknownModelError(f"unknown model {name!r}; available: {self.names() or 'none'}")
        return self._loaded[(name, self._latest[name])]

    def loaded_count(self) -> int:
        return len(self._loaded) + len(self._retired)

    # ---- acquire / release ----------------------------------------------------------------------
    async def acquire(self, name: str, version: int | None = None) -> ServedModel:
        """The version to serve (the latest when None), with a reference the caller must release."""
        name = name or self.default_model
        if name not in self._on_disk and name not in self._latest:
            raise UnknownModelError(f"unknown model {name!r}; available: {self.names() or 'none'}")
        if version is None:
            if name not in self._latest:
                raise ModelLoadError(
                    f"model {name!r} has no servable version: every file failed to load or was refused "
                    f"(versions on disk: {self.versions_on_disk(name)}); see the server log"
                )
            served = self.latest(name)
        elif (name, version) in self._loaded:
            served = self._loaded[(name, version)]
        else:
            served = await self._load_on_demand(name, version)
        served.batcher.start()
        return served.acquire()

    async def _load_on_demand(self, name: str, version: int) -> ServedModel:
        file = self._on_disk.get(name, {}).get(version)
        if file is None:
            raise UnknownVersionError(
                f"model {name!r} has no version {version}; versions: {self.versions_on_disk(name)}"
            )
        async with self._lock:
            if (name, version) in self._loaded:
                return self._loaded[(name, version)]
            if self._failed.get(file.path) != file.signature:
                loaded = await asyncio.get_running_loop().run_in_executor(None, self._load, file)
                if loaded.model is not None:
                    return self._install(loaded)
                self._refuse(loaded)
        error = self._errors.get((name, version), "does not load")
        raise ModelLoadError(f"model {name!r} version {version} is not servable: {error}")

    # ---- polling --------------------------------------------------------------------------------
    def scan_and_load(self) -> tuple[dict[str, dict[int, ModelFile]], list[_Loaded]]:
        """File system scan, then loading (and the canary) of each model's newest versions, newest first,
        until one is servable; safe on a worker thread (reads state only)."""
        on_disk = scan_models(self.root, prefer_onnx=self._prefer_onnx)
        loaded: list[_Loaded] = []
        for versions in on_disk.values():
            for version in sorted(versions, reverse=True):
                file = versions[version]
                current = self._loaded.get((file.name, version))
                if current is not None and current.file.signature == file.signature:
                    break  # the newest servable version is loaded and unchanged
                if self._failed.get(file.path) == file.signature:
                    continue  # known bad; read again only when it changes
                result = self._load(file)
                loaded.append(result)
                if result.model is not None:
                    break
        return on_disk, loaded

    def _load(self, file: ModelFile) -> _Loaded:
        """Load one file and run the canary; never raises (a bad hosted file must not stop the server)."""
        try:
            model = self._loader(file.path, self.device)
        except Exception as exc:
            error = self._without_paths(_load_problem(exc), file)
            log.error("model %r version %d: failed to load %s: %s", file.name, file.version, file.path, exc)
            return _Loaded(file, error=f"{type(exc).__name__}: {error}", reason="load_error")
        try:
            problem = canary_problem(model)
        except Exception as exc:
            problem = f"canary forward raised {type(exc).__name__}: {self._without_paths(str(exc), file)}"
        if problem is not None:
            log.warning("model %r version %d: refused %s, not promoted: %s", file.name, file.version,
                        file.path, problem)  # fmt: skip
            return _Loaded(file, error=f"refused: {problem}", reason="canary")
        log.info(
            "model %r version %d: loaded %s (%s, obs_dim=%s, action_dim=%s, device=%s), canary passed",
            file.name, file.version, file.path.name,
            "recurrent" if model.is_recurrent else "simple", model.obs_dim, model.action_dim, model.device,
        )  # fmt: skip
        return _Loaded(file, model=model)

    def _without_paths(self, text: str, file: ModelFile) -> str:
        """``text`` with the server's paths replaced (by the file name, or ``<models>`` for the root):
        messages built from it can reach clients."""
        for path, shown in ((file.path.resolve(), file.path.name), (file.path, file.path.name),
                            (self.root.resolve(), "<models>"), (self.root, "<models>")):  # fmt: skip
            text = text.replace(str(path), shown)
        return text

    def apply(self, on_disk: dict[str, dict[int, ModelFile]], loaded: list[_Loaded]) -> None:
        """Install what `scan_and_load` produced, re-point each model's latest at its newest servable
        version (forward or back), and unload what nobody uses (event loop)."""
        self._on_disk = on_disk
        for result in loaded:
            if result.model is None:
                self._refuse(result)
            else:
                self._failed.pop(result.file.path, None)
                self._install(result)
        for name in sorted(set(self._latest) | set(on_disk)):
            self._set_latest(name, self._newest_servable(name))
        self._unload_unused()

    def _refuse(self, result: _Loaded) -> None:
        file = result.file
        self._failed[file.path] = file.signature
        self._errors[(file.name, file.version)] = result.error or "does not load"
        stale = self._loaded.pop((file.name, file.version), None)
        if stale is not None:  # the file changed into something bad: running streams keep the old copy
            self._retired.append(stale)
        if self._on_load_failure is not None:
            self._on_load_failure(file.name, result.reason)

    def _newest_servable(self, name: str) -> int | None:
        """The newest version on disk whose loaded copy is of the file now on disk."""
        for version, file in sorted(self._on_disk.get(name, {}).items(), reverse=True):
            served = self._loaded.get((name, version))
            if served is not None and served.file.signature == file.signature:
                return version
        return None

    def _set_latest(self, name: str, version: int | None) -> None:
        before = self._latest.get(name)
        if version == before:
            return
        if version is None:
            del self._latest[name]
            why = "its files are gone" if name not in self._on_disk else "no version on disk is servable"
            log.warning("model %r: %s; no new work is routed to it (was version %s)", name, why, before)
        else:
            self._latest[name] = version
            if before is not None:
                direction = "rolled forward" if version > before else "rolled back"
                log.info("model %r: %s to version %d (was %d); new episodes get it", name, direction, version,
                         before)  # fmt: skip

    def _install(self, loaded: _Loaded) -> ServedModel:
        key = (loaded.file.name, loaded.file.version)
        if loaded.model is None:
            raise ValueError(f"model {key[0]!r} version {key[1]}: nothing loaded to install ({loaded.error})")
        on_batch = None
        if self._on_batch is not None:
            report, name = self._on_batch, key[0]

            def on_batch(stats: BatchStats) -> None:
                report(name, stats)

        batcher = StepBatcher(
            loaded.model,
            self._executor,
            max_batch=self._max_batch,
            max_delay_us=self._max_delay_us,
            inline_rows=self._inline_rows,
            on_batch=on_batch,
        )
        served = ServedModel(loaded.file, loaded.model, batcher)
        old = self._loaded.get(key)
        if old is not None:
            log.info("model %r version %d: file changed, reloaded; running streams keep the old copy", *key)
            self._retired.append(old)
        self._loaded[key] = served
        return served

    def _unload_unused(self) -> None:
        for key, served in list(self._loaded.items()):
            name, version = key
            if served.refs == 0 and self._latest.get(name) != version:
                del self._loaded[key]
                self._retired.append(served)
        still = []
        for served in self._retired:
            if served.refs == 0:
                log.info("model %r version %d: unloaded (no longer used)", served.name, served.version)
                asyncio.get_running_loop().create_task(served.batcher.close())
            else:
                still.append(served)
        self._retired = still

    async def refresh(self) -> None:
        """One poll: scan and load on a worker thread, then install on the loop."""
        async with self._lock:
            on_disk, loaded = await asyncio.get_running_loop().run_in_executor(None, self.scan_and_load)
            self.apply(on_disk, loaded)

    async def close(self) -> None:
        for served in [*self._loaded.values(), *self._retired]:
            await served.batcher.close()
        self._loaded.clear()
        self._retired.clear()
        self._latest.clear()
