"""What the client returns: plain frozen dataclasses of numpy arrays and Python values, and the pure
functions that build them from the server's responses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hamlet_client.proto import inference_service_pb2 as service_pb2
from hamlet_client.proto import model_pb2
from hamlet_client.tensors import Hidden, decode_hidden, decode_tensor

__all__ = [
    "ModelInfo",
    "ModelMetadata",
    "Prediction",
    "ServerInfo",
    "SessionInfo",
    "StepResult",
    "WatchFrame",
    "metadata_from_proto",
    "model_infos_from_proto",
    "prediction_from_proto",
    "server_info_from_proto",
    "session_infos_from_proto",
    "step_result_from_proto",
    "watch_frame_from_proto",
]

_NETWORK_TYPES: dict[int, str] = {
    model_pb2.NETWORK_TYPE_SIMPLE: "simple",
    model_pb2.NETWORK_TYPE_RECURRENT: "recurrent",
}


@dataclass(frozen=True)
class Prediction:
    """The answer to `HamletClient.predict` for a batch of B observations."""

    actions: npt.NDArray[np.int64]
    """``[B]`` chosen actions."""
    q_values: npt.NDArray[np.float32]
    """``[B, action_dim]`` Q-values of the network (before any masking)."""
    hidden: Hidden | None
    """Recurrent models: the next ``(h, c)``, each ``[1, B, hidden_dim]``; pass it to the next call. Else None."""
    model: str
    """Name of the model that answered."""
    version: int
    """Version (training episode) of the model that answered."""

    @property
    def model_version(self) -> tuple[str, int]:
        """``(model, version)`` that produced this prediction."""
        return self.model, self.version


@dataclass(frozen=True)
class StepResult:
    """The answer to one `Episode.step`: an action and Q-values for every environment of the stream."""

    actions: npt.NDArray[np.int64]
    """``[num_envs]`` chosen actions."""
    q_values: npt.NDArray[np.float32]
    """``[num_envs, action_dim]`` Q-values."""
    step_index: int
    """0 for the stream's first step, then +1 per step."""
    model: str
    version: int

    @property
    def model_version(self) -> tuple[str, int]:
        """``(model, version)`` that produced this step."""
        return self.model, self.version


@dataclass(frozen=True)
class SessionInfo:
    """One episode stream open on the server (from `HamletClient.list_sessions`, with ``--enable-watch``)."""

    session_id: str
    model: str
    version: int
    num_envs: int
    obs_dim: int
    action_dim: int
    step_index: int
    """The index of its next step."""


@dataclass(frozen=True)
class WatchFrame:
    """One answered step of a watched episode (from `HamletClient.watch`)."""

    session_id: str
    model: str
    version: int
    step_index: int
    observations: npt.NDArray[np.float32]
    """``[num_envs, obs_dim]``: what the simulator sent."""
    q_values: npt.NDArray[np.float32]
    """``[num_envs, action_dim]``: what the actions were chosen from."""
    actions: npt.NDArray[np.int64]
    reset: npt.NDArray[np.bool_]
    """``[num_envs]``: True where the observation started a new episode."""
    frames_dropped: int
    """Frames this watcher missed so far by reading too slowly."""


@dataclass(frozen=True)
class ModelInfo:
    """One model of the server's repository (from `HamletClient.list_models`)."""

    name: str
    versions: tuple[int, ...]
    """Every version found on disk, ascending."""
    loaded_versions: tuple[int, ...]
    """Versions loaded in memory (the newest, plus older ones still used by running episodes)."""
    latest_version: int
    """The version a request gets when it names none."""
    network_type: str
    """``"simple"`` (MLP) or ``"recurrent"`` (CNN + LSTM), ``"unspecified"`` if the server did not say."""
    obs_dim: int
    action_dim: int
    is_default: bool
    """True for the model a request gets when it names none."""


@dataclass(frozen=True)
class ServerInfo:
    """The limits a server holds clients to, and its version (from `HamletClient.server_info`)."""

    server_version: str
    max_envs: int
    """Most environments one episode may drive."""
    max_predict_batch: int
    """Most observations in one `predict` call."""
    max_message_bytes: int
    session_ttl_seconds: float
    """An episode silent (either way) for this long is ended with `SessionExpiredError`."""
    start_timeout_seconds: float
    max_sessions: int
    """Most open episodes on the server."""
    max_slots: int
    """Most environment rows per recurrent model version, over all episodes."""
    device: str
    backend: str


@dataclass(frozen=True)
class ModelMetadata:
    """The checkpoint metadata of one model version (from `HamletClient.metadata`)."""

    name: str
    version: int
    format_version: str
    network_type: str
    obs_dim: int
    action_dim: int
    hidden_dim: int
    """0 for networks without hidden state."""
    episode: int
    epsilon: float | None
    curriculum_stage: int | None
    created_at: str
    sha256: str
    num_parameters: int
    brain_spec_hash: str
    config_dir: str
    source_file: str
    device: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def recurrent(self) -> bool:
        """True for the CNN + LSTM network (it carries hidden state)."""
        return self.network_type == "recurrent"


def _network_type(value: int) -> str:
    return _NETWORK_TYPES.get(value, "unspecified")


def prediction_from_proto(resp: service_pb2.PredictResponse) -> Prediction:
    """`Prediction` from a PredictResponse."""
    return Prediction(
        actions=np.array(resp.actions, dtype=np.int64),
        q_values=decode_tensor(resp.q_values),
        hidden=decode_hidden(resp.hidden) if resp.HasField("hidden") else None,
        model=resp.model,
        version=resp.version,
    )


def step_result_from_proto(result: service_pb2.EpisodeStepResult) -> StepResult:
    """`StepResult` from an EpisodeStepResult."""
    return StepResult(
        actions=np.array(result.actions, dtype=np.int64),
        q_values=decode_tensor(result.q_values),
        step_index=result.step_index,
        model=result.model,
        version=result.version,
    )


def model_infos_from_proto(resp: service_pb2.ListModelsResponse) -> list[ModelInfo]:
    """`ModelInfo` per model of a ListModelsResponse, in the server's order."""
    return [
        ModelInfo(
            name=m.name,
            versions=tuple(m.versions),
            loaded_versions=tuple(m.loaded_versions),
            latest_version=m.latest_version,
            network_type=_network_type(m.network_type),
            obs_dim=m.obs_dim,
            action_dim=m.action_dim,
            is_default=m.name == resp.default_model,
        )
        for m in resp.models
    ]


def metadata_from_proto(meta: model_pb2.ModelMetadata) -> ModelMetadata:
    """`ModelMetadata` from the proto message."""
    return ModelMetadata(
        name=meta.name,
        version=meta.version,
        format_version=meta.format_version,
        network_type=_network_type(meta.network_type),
        obs_dim=meta.obs_dim,
        action_dim=meta.action_dim,
        hidden_dim=meta.hidden_dim,
        episode=meta.episode,
        epsilon=meta.epsilon if meta.HasField("epsilon") else None,
        curriculum_stage=meta.curriculum_stage if meta.HasField("curriculum_stage") else None,
        created_at=meta.created_at,
        sha256=meta.sha256,
        num_parameters=meta.num_parameters,
        brain_spec_hash=meta.brain_spec_hash,
        config_dir=meta.config_dir,
        source_file=meta.source_file,
        device=meta.device,
        extra=dict(meta.extra),
    )


def server_info_from_proto(resp: service_pb2.GetServerInfoResponse) -> ServerInfo:
    """`ServerInfo` from a GetServerInfoResponse."""
    return ServerInfo(
        server_version=resp.server_version, max_envs=resp.max_envs, max_predict_batch=resp.max_predict_batch,
        max_message_bytes=resp.max_message_bytes, session_ttl_seconds=resp.session_ttl_seconds,
        start_timeout_seconds=resp.start_timeout_seconds, max_sessions=resp.max_sessions,
        max_slots=resp.max_slots, device=resp.device, backend=resp.backend,
    )  # fmt: skip


def session_infos_from_proto(resp: service_pb2.ListSessionsResponse) -> list[SessionInfo]:
    return [
        SessionInfo(s.session_id, s.model, s.version, s.num_envs, s.obs_dim, s.action_dim, s.step_index)
        for s in resp.sessions
    ]


def watch_frame_from_proto(frame: service_pb2.WatchEpisodesResponse) -> WatchFrame:
    num_envs = len(frame.actions)
    reset = np.array(frame.reset, dtype=bool) if len(frame.reset) else np.zeros(num_envs, dtype=bool)
    return WatchFrame(
        session_id=frame.session_id, model=frame.model, version=frame.version, step_index=frame.step_index,
        observations=decode_tensor(frame.observations), q_values=decode_tensor(frame.q_values),
        actions=np.array(frame.actions, dtype=np.int64), reset=reset, frames_dropped=frame.frames_dropped,
    )  # fmt: skip
