"""Thin Python client for the Hamlet Serve gRPC service (grpcio, protobuf and numpy; no torch).

    from hamlet_client import HamletClient

    with HamletClient("localhost:50051") as client:
        result = client.predict(obs)              # numpy: result.actions [B], result.q_values [B, A]
        with client.episode(num_envs=4) as episode:
            step = episode.step(obs_batch)        # the server keeps the LSTM state between steps

`client.local_policy(model)` runs the model in this process instead (onnxruntime: ``hamlet-client[local]``),
with the same ``predict`` and ``episode``. `AsyncHamletClient` is the same for asyncio. Errors are
`HamletError` subclasses, one per gRPC status.
"""

from hamlet_client.aio import AsyncEpisode, AsyncHamletClient
from hamlet_client.artifacts import ModelArtifact
from hamlet_client.client import DEFAULT_TIMEOUT, Episode, HamletClient
from hamlet_client.errors import (
    ArtifactIntegrityError,
    CancelledError,
    CapacityExceededError,
    DeadlineExceededError,
    FailedPreconditionError,
    HamletError,
    InternalError,
    InvalidArgumentError,
    ModelNotFoundError,
    PermissionDeniedError,
    ServerDrainingError,
    SessionExpiredError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from hamlet_client.local import LocalEpisode, LocalPolicy
from hamlet_client.results import (
    ModelInfo,
    ModelMetadata,
    Prediction,
    ServerInfo,
    SessionInfo,
    StepResult,
    WatchFrame,
)
from hamlet_client.service_config import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "ArtifactIntegrityError",
    "AsyncEpisode",
    "AsyncHamletClient",
    "CancelledError",
    "CapacityExceededError",
    "DeadlineExceededError",
    "Episode",
    "FailedPreconditionError",
    "HamletClient",
    "HamletError",
    "InternalError",
    "InvalidArgumentError",
    "LocalEpisode",
    "LocalPolicy",
    "ModelArtifact",
    "ModelInfo",
    "ModelMetadata",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "Prediction",
    "RetryPolicy",
    "ServerDrainingError",
    "ServerInfo",
    "SessionExpiredError",
    "SessionInfo",
    "StepResult",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WatchFrame",
    "__version__",
]
