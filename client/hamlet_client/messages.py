"""Request messages of the `hamlet.v1` contract built from the client's arguments (pure functions).

Shared by `HamletClient` and `AsyncHamletClient`: they differ only in how the messages travel.
"""

from __future__ import annotations

import numbers
from typing import Any

from hamlet_client.errors import HamletError, InvalidArgumentError, error_for_ended
from hamlet_client.proto import inference_service_pb2 as service_pb2
from hamlet_client.tensors import encode_action_mask, encode_hidden, encode_observations, encode_reset

__all__ = [
    "check_epsilon",
    "episode_start_request",
    "episode_step_request",
    "metadata_request",
    "predict_request",
]

_UINT64_MAX = 2**64 - 1


def check_epsilon(epsilon: Any, *, field: str = "epsilon") -> float:
    """``epsilon`` as a float in [0, 1], else `InvalidArgumentError`."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not 0.0 <= float(epsilon) <= 1.0:
        raise InvalidArgumentError(f"{field}: expected a number in [0, 1] (0 = greedy), got {epsilon!r}")
    return float(epsilon)


def _check_version(version: Any) -> int | None:
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or int(version) < 0:
        raise InvalidArgumentError(f"version: expected a non-negative int or None (latest), got {version!r}")
    return int(version)


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= _UINT64_MAX:
        raise InvalidArgumentError(f"seed: expected an int in [0, 2**64) or None, got {seed!r}")
    return int(seed)


def _check_model(model: Any) -> str:
    if model is None:
        return ""
    if not isinstance(model, str):
        raise InvalidArgumentError(f"model: expected a model name (str) or None (the default), got {model!r}")
    return model


def predict_request(
    obs: Any,
    *,
    model: str | None,
    version: int | None,
    epsilon: float,
    hidden: Any,
    seed: int | None,
    action_mask: Any,
) -> service_pb2.PredictRequest:
    """A PredictRequest; see `HamletClient.predict` for the arguments.

    NaN/Inf observations are left to the server (INVALID_ARGUMENT; a stateless call loses nothing), which
    saves the scan on the hot path. Episode steps do scan: a server-side refusal would end the stream.
    """
    observations, batch = encode_observations(obs, check_finite=False)
    req = service_pb2.PredictRequest(
        model=_check_model(model),
        version=_check_version(version),
        observations=observations,
        epsilon=check_epsilon(epsilon),
        seed=_check_seed(seed),
    )
    if hidden is not None:
        req.hidden.CopyFrom(encode_hidden(hidden, batch=batch))
    if action_mask is not None:
        req.action_mask.CopyFrom(encode_action_mask(action_mask, batch=batch))
    return req


def metadata_request(model: str | None, version: int | None) -> service_pb2.GetModelMetadataRequest:
    """A GetModelMetadataRequest (empty model: the default; no version: the latest)."""
    return service_pb2.GetModelMetadataRequest(model=_check_model(model), version=_check_version(version))


def episode_start_request(
    *,
    model: str | None,
    version: int | None,
    num_envs: int,
    epsilon: float,
    seed: int | None,
    snapshot_every: int = 0,
) -> service_pb2.StreamEpisodeRequest:
    """The opening StreamEpisodeRequest of an episode."""
    if isinstance(num_envs, bool) or not isinstance(num_envs, numbers.Integral) or int(num_envs) < 1:
        raise InvalidArgumentError(f"num_envs: expected an int >= 1, got {num_envs!r}")
    if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, numbers.Integral) or snapshot_every < 0:
        raise InvalidArgumentError(f"snapshot_every: expected an int >= 0, got {snapshot_every!r}")
    start = service_pb2.EpisodeStart(
        model=_check_model(model),
        version=_check_version(version),
        epsilon=check_epsilon(epsilon),
        seed=_check_seed(seed),
        num_envs=int(num_envs),
        snapshot_every=int(snapshot_every),
    )
    return service_pb2.StreamEpisodeRequest(start=start)


def episode_step_request(
    obs: Any, *, num_envs: int, reset: Any, action_mask: Any, epsilon: float | None
) -> service_pb2.StreamEpisodeRequest:
    """A step StreamEpisodeRequest: ``obs`` is ``[num_envs, obs_dim]`` (or ``[obs_dim]`` when num_envs is 1)."""
    observations, batch = encode_observations(obs)
    if batch != num_envs:
        raise InvalidArgumentError(
            f"obs: expected one observation per environment, [{num_envs}, obs_dim], got {batch} row(s)"
        )
    step = service_pb2.EpisodeStep(
        observations=observations,
        reset=encode_reset(reset, num_envs=num_envs),
        epsilon=None if epsilon is None else check_epsilon(epsilon),
    )
    if action_mask is not None:
        step.action_mask.CopyFrom(encode_action_mask(action_mask, batch=num_envs))
    return service_pb2.StreamEpisodeRequest(step=step)


def ended_error(ended: service_pb2.EpisodeEnded) -> HamletError:
    """The typed error for the server's in-band ``EpisodeEnded`` (why it ended the stream)."""
    name = service_pb2.EndReason.Name(ended.reason) if ended.reason in service_pb2.EndReason.values() else ""
    end_reason = name.removeprefix("END_REASON_").lower() if name else "unspecified"
    message = ended.message or f"the server ended the episode stream ({end_reason})"
    return error_for_ended(end_reason, message, ended.status_code, ended.error_reason)
