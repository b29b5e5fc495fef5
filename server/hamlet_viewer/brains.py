"""Where the viewer's actions come from: a served model (`RemoteBrain`) or a local checkpoint (`LocalBrain`).

Both open a `PolicyStream` over ``num_envs`` environments whose ``step`` returns one `Decision` per step:
the actions and the Q-values of the *same* forward pass that chose them (no second forward for display).
Recurrent state advances every step: the server keeps it per stream; the local stream keeps ``(h, c)``
itself and zeroes the rows of environments that restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from hamlet_viewer.errors import StreamLostError, ViewerConfigError
from townlet.inference.filenames import parse_checkpoint_name

if TYPE_CHECKING:  # both import heavy packages (grpc, torch): loaded only by the brain that needs them
    from hamlet_client import Episode
    from townlet.inference import HamletModel

__all__ = [
    "Brain",
    "Decision",
    "LocalBrain",
    "ModelEntry",
    "PolicyStream",
    "RemoteBrain",
    "checkpoint_versions",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """One step's answer for ``N`` environments."""

    actions: npt.NDArray[np.int64]
    """``[N]`` chosen actions."""
    q_values: npt.NDArray[np.float32]
    """``[N, A]`` Q-values the actions were chosen from (before masking)."""
    model: str
    version: int


@dataclass(frozen=True)
class ModelEntry:
    """One model the viewer can show (from ListModels, or the checkpoint's folder)."""

    name: str
    versions: tuple[int, ...]
    latest_version: int
    obs_dim: int
    network_type: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "latest_version": self.latest_version,
            "obs_dim": self.obs_dim,
            "network_type": self.network_type,
        }


class PolicyStream(Protocol):
    """An open episode over ``num_envs`` environments, pinned to one model version."""

    model: str
    version: int
    recurrent: bool

    def step(
        self, obs: npt.NDArray[np.float32], reset: npt.NDArray[np.bool_], mask: npt.NDArray[np.bool_], epsilon: float
    ) -> Decision:
        """``obs [N, obs_dim]``, ``reset [N]`` (True: this observation starts an episode), ``mask [N, A]``."""
        ...

    def close(self) -> None: ...


class Brain(Protocol):
    """A source of models and of episode streams."""

    source: str
    """``"remote"`` or ``"local"``."""
    label: str
    """The server target or the checkpoint path, for the page."""

    def models(self) -> list[ModelEntry]: ...

    def metadata(self, model: str, version: int | None) -> Mapping[str, Any]:
        """Checkpoint metadata of a version (``level``, ``seed``, ``affordance_layout``... when recorded)."""
        ...

    def open(self, model: str, version: int | None, num_envs: int, seed: int | None) -> PolicyStream: ...

    def problem(self) -> str | None:
        """None when the source of models answers now, else why not (one line, for the page's badge)."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- remote (gRPC)

PROBE_TIMEOUT = 2.0
"""Seconds `RemoteBrain.problem` waits for the server's answer."""
# gRPC's reconnect backoff grows to 120 s by default: a viewer would not see a restarted server for minutes.
_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 500), ("grpc.max_reconnect_backoff_ms", 2000)]


class RemoteBrain:
    """Models served by a Hamlet Serve server, played through `HamletClient.episode` streams."""

    source = "remote"

    def __init__(self, target: str, *, token: str | None = None, tls: bool = False, timeout: float = 10.0) -> None:
        from hamlet_client import HamletClient

        self.label = target
        self._client = HamletClient(target, token=token, tls=tls or None, timeout=timeout, options=_CHANNEL_OPTIONS)

    def models(self) -> list[ModelEntry]:
        infos = self._client.list_models()
        infos.sort(key=lambda info: (not info.is_default, info.name))
        return [
            ModelEntry(info.name, info.versions, info.latest_version, info.obs_dim, info.network_type) for info in infos
        ]

    def metadata(self, model: str, version: int | None) -> Mapping[str, Any]:
        meta = self._client.metadata(model, version=version)
        return {**meta.extra, "episode": meta.episode, "network_type": meta.network_type}

    def open(self, model: str, version: int | None, num_envs: int, seed: int | None) -> PolicyStream:
        episode = self._client.episode(model, version=version, num_envs=num_envs, seed=seed)
        return _RemoteStream(episode)

    def problem(self) -> str | None:
        from hamlet_client import HamletError

        try:
            self._client.server_info(timeout=PROBE_TIMEOUT)
        except HamletError as exc:
            return f"{type(exc).__name__}: {exc.message}"
        return None

    def close(self) -> None:
        self._client.close()


class _RemoteStream:
    def __init__(self, episode: Episode) -> None:
        self._episode = episode
        self.model: str = episode.model
        self.version: int = episode.version
        self.recurrent: bool = episode.recurrent

    def step(
        self, obs: npt.NDArray[np.float32], reset: npt.NDArray[np.bool_], mask: npt.NDArray[np.bool_], epsilon: float
    ) -> Decision:
        from hamlet_client import HamletError

        try:
            step = self._episode.step(obs, reset=reset, action_mask=mask, epsilon=epsilon)
        except HamletError as exc:
            if not self._episode.closed:  # refused before sending: the stream and its state are intact
                raise
            # idle past the server's TTL, server draining or restarted, cancelled: its LSTM state is gone
            code = exc.code.name if exc.code is not None else type(exc).__name__
            raise StreamLostError(f"the episode stream ended: {code} {exc.message}") from exc
        return Decision(step.actions, step.q_values, step.model, step.version)

    def close(self) -> None:
        if not self._episode.closed:
            try:
                self._episode.close()
            except Exception as exc:  # a stream that died under us has nothing left to free
                logger.debug("closing the episode stream: %s", exc)


# --------------------------------------------------------------------------- local (HamletModel)


def _episode_of(path: Path) -> int | None:
    """The episode of a ``model_epN.pt`` or ``checkpoint_epN.pt`` file (`townlet.inference.filenames`), else None."""
    name = parse_checkpoint_name(path.name)
    return name.episode if name is not None and (name.is_inference or name.is_training) else None


def checkpoint_versions(path: Path) -> dict[int, Path]:
    """``{episode: file}`` of the ``model_epNNNNN.pt`` / ``checkpoint_epNNNNN.pt`` files next to ``path``
    (a file or a folder); a file with another name is version 0. The ``model_`` file wins a tie."""
    if path.is_file() and _episode_of(path) is None:
        return {0: path}
    folder = path if path.is_dir() else path.parent
    found: dict[int, Path] = {}
    for candidate in sorted(folder.glob("*_ep*.pt"), key=lambda p: p.name):  # checkpoint_ before model_
        episode = _episode_of(candidate)
        if episode is not None:
            found[episode] = candidate
    if not found:
        raise ViewerConfigError(f"--checkpoint {path}: no model_epNNNNN.pt or checkpoint_epNNNNN.pt there")
    return found


class LocalBrain:
    """One checkpoint (and its siblings ``*_epNNNNN.pt`` as versions) run in this process by `HamletModel`."""

    source = "local"

    def __init__(self, checkpoint: str | Path, *, device: str = "cpu") -> None:
        self._path = Path(checkpoint)
        if not self._path.exists():
            raise ViewerConfigError(f"--checkpoint {self._path}: no such file or folder")
        self.label = str(self._path)
        self._device = device
        self._name = (self._path if self._path.is_dir() else self._path.parent).name or "checkpoint"
        self._loaded: dict[int, HamletModel] = {}
        self._pinned = None if self._path.is_dir() else (_episode_of(self._path) or 0)

    def _files(self) -> dict[int, Path]:
        return checkpoint_versions(self._path)

    def _model(self, version: int | None) -> tuple[int, HamletModel]:
        files = self._files()
        if version is None:
            version = max(files)
        if version not in files:
            raise ViewerConfigError(f"version {version} of {self._name}: not found; have {sorted(files)}")
        if version not in self._loaded:
            from townlet.inference import HamletModel

            self._loaded[version] = HamletModel.load(files[version], device=self._device)
        return version, self._loaded[version]

    def models(self) -> list[ModelEntry]:
        files = self._files()
        _, model = self._model(self._pinned if self._pinned in files else None)
        network = "recurrent" if model.is_recurrent else "simple"
        return [ModelEntry(self._name, tuple(sorted(files)), max(files), model.obs_dim, network)]

    def metadata(self, model: str, version: int | None) -> Mapping[str, Any]:
        self._check_name(model)
        _, loaded = self._model(version)
        return dict(loaded.metadata)

    def open(self, model: str, version: int | None, num_envs: int, seed: int | None) -> PolicyStream:
        self._check_name(model)
        version, loaded = self._model(version)
        return _LocalStream(loaded, self._name, version, num_envs, seed)

    def problem(self) -> str | None:
        return None  # the checkpoint is in this process: there is no server to lose

    def _check_name(self, model: str) -> None:
        if model != self._name:
            raise ViewerConfigError(f"model {model!r}: this viewer runs the local checkpoint {self._name!r} only")

    def close(self) -> None:
        self._loaded.clear()


class _LocalStream:
    """Keeps the LSTM state ``(h, c)`` each ``[1, N, H]`` between steps; `HamletModel.predict` zeroes the rows
    of restarting envs (``episode_start``)."""

    def __init__(self, model: HamletModel, name: str, version: int, num_envs: int, seed: int | None) -> None:
        import torch

        self._model = model
        self.model = name
        self.version = version
        self.recurrent = bool(model.is_recurrent)
        self._hidden: tuple[npt.NDArray[Any], npt.NDArray[Any]] | None = None  # (h, c) [1, N, H] after a step
        self._generator = torch.Generator(device=model.device)
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()

    def step(
        self, obs: npt.NDArray[np.float32], reset: npt.NDArray[np.bool_], mask: npt.NDArray[np.bool_], epsilon: float
    ) -> Decision:
        result = self._model.predict(
            obs, hidden=self._hidden, epsilon=epsilon, action_mask=mask, generator=self._generator, episode_start=reset
        )  # numpy in, numpy out; rows where ``reset`` is True start from zero state
        self._hidden = result.hidden
        return Decision(
            np.asarray(result.actions, dtype=np.int64),
            np.asarray(result.q_values, np.float32),
            self.model,
            self.version,
        )

    def close(self) -> None:
        self._hidden = None
