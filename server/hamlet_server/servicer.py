"""The hamlet.v1.InferenceService servicer: protobuf <-> domain, and domain errors -> gRPC status codes.

The work lives below: `ModelRepository` (which version), `SessionTable` (per-stream state), `StepBatcher`
(one forward for many requests) and `tensor_codec` (validated tensors). A bad request ends only its own
call or stream, with a status whose message says what was expected and what came.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import torch

from hamlet_client._generated.hamlet.v1 import inference_service_pb2 as pb
from hamlet_client._generated.hamlet.v1 import inference_service_pb2_grpc as pb_grpc
from hamlet_client._generated.hamlet.v1 import model_pb2
from hamlet_server.batcher import WorkItem
from hamlet_server.config import ServerConfig
from hamlet_server.metrics import ServerMetrics
from hamlet_server.repository import (
    ModelLoadError,
    ModelRepository,
    ServedModel,
    UnknownModelError,
    UnknownVersionError,
)
from hamlet_server.sessions import Session, SessionLimitError, SessionTable
from hamlet_server.tensor_codec import (
    InvalidTensorError,
    decode_action_mask,
    decode_hidden,
    decode_observations,
    encode_hidden,
    encode_tensor,
)
from townlet.inference.validation import check_epsilon

__all__ = ["InferenceServicer", "RequestError", "metadata_to_proto"]

log = logging.getLogger(__name__)
SC = grpc.StatusCode


class RequestError(Exception):
    """A request the servicer refuses: carries the status code to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RequestError):
        return exc.code, exc.message
    if isinstance(exc, InvalidTensorError | ValueError):
        return SC.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, UnknownModelError | UnknownVersionError):
        return SC.NOT_FOUND, str(exc)
    if isinstance(exc, ModelLoadError):
        return SC.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, SessionLimitError):
        return SC.RESOURCE_EXHAUSTED, str(exc)
    log.exception("internal error while serving a request", exc_info=exc)
    return SC.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


_NETWORK_TYPES = {"simple": model_pb2.NETWORK_TYPE_SIMPLE, "recurrent": model_pb2.NETWORK_TYPE_RECURRENT}
_META_FIELDS = {
    "format_version", "network_type", "obs_dim", "action_dim", "hidden_dim", "episode", "epsilon",
    "curriculum_stage", "created_at", "sha256", "num_parameters", "brain_spec_hash", "config_dir",
}  # fmt: skip


def _iso(value: Any) -> str:
    if isinstance(value, int | float):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    return "" if value is None else str(value)


def metadata_to_proto(served: ServedModel) -> model_pb2.ModelMetadata:
    """The checkpoint metadata of a loaded version as a ModelMetadata message."""
    meta = dict(served.model.metadata)
    msg = model_pb2.ModelMetadata(
        name=served.name,
        version=served.version,
        format_version=str(meta.get("format_version") or ""),
        network_type=_NETWORK_TYPES.get(str(meta.get("network_type")), model_pb2.NETWORK_TYPE_UNSPECIFIED),
        obs_dim=served.obs_dim,
        action_dim=served.action_dim,
        hidden_dim=served.hidden_dim,
        episode=int(meta["episode"]) if meta.get("episode") is not None else served.version,
        created_at=_iso(meta.get("created_at")),
        sha256=str(meta.get("sha256") or ""),
        num_parameters=int(meta.get("num_parameters") or served.model.num_parameters),
        brain_spec_hash=str(meta.get("brain_spec_hash") or ""),
        config_dir=str(meta.get("config_dir") or ""),
        source_file=served.file.path.name,
        device=str(served.device),
    )
    if meta.get("epsilon") is not None:
        msg.epsilon = float(meta["epsilon"])
    if meta.get("curriculum_stage") is not None:
        msg.curriculum_stage = int(meta["curriculum_stage"])
    for key, value in meta.items():
        if key not in _META_FIELDS and value is not None and isinstance(value, str | int | float | bool):
            msg.extra[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return msg


class InferenceServicer(pb_grpc.InferenceServiceServicer):  # type: ignore[misc]
    """hamlet.v1.InferenceService on grpc.aio."""

    def __init__(
        self, repository: ModelRepository, sessions: SessionTable, config: ServerConfig, metrics: ServerMetrics
    ) -> None:
        self.repository = repository
        self.sessions = sessions
        self.config = config
        self.metrics = metrics
        self.draining = False
        self._step_latency = metrics.latency.labels("StreamEpisode.step")
        self._predict_latency = metrics.latency.labels("Predict")

    # ---- helpers ---------------------------------------------------------------------------------
    async def _fail(self, context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
        code, message = _status_of(exc)
        self.metrics.record(method, code.name)
        await context.abort(code, message)

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise RequestError(SC.UNAVAILABLE, "server is shutting down; retry on another replica")

    async def _acquire(self, model: str, version: int | None) -> ServedModel:
        try:
            return await self.repository.acquire(model, version)
        except UnknownModelError as exc:
            raise RequestError(SC.NOT_FOUND, str(exc)) from exc

    # ---- ListModels / GetModelMetadata -----------------------------------------------------------
    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> Any:
        repo = self.repository
        response = pb.ListModelsResponse(default_model=repo.default_model)
        for name in repo.names():
            latest = repo.latest(name)
            response.models.add(
                name=name, versions=repo.versions_on_disk(name), loaded_versions=repo.loaded_versions(name),
                latest_version=latest.version, obs_dim=latest.obs_dim, action_dim=latest.action_dim,
                network_type=model_pb2.NETWORK_TYPE_RECURRENT if latest.is_recurrent else model_pb2.NETWORK_TYPE_SIMPLE,
            )  # fmt: skip
        self.metrics.record("ListModels", "OK")
        return response

    async def GetModelMetadata(self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        try:
            version = request.version if request.HasField("version") else None
            served = await self._acquire(request.model, version)
            try:
                response = pb.GetModelMetadataResponse(metadata=metadata_to_proto(served))
            finally:
                served.release()
        except Exception as exc:
            await self._fail(context, "GetModelMetadata", exc)
        self.metrics.record("GetModelMetadata", "OK")
        return response

    # ---- Predict ---------------------------------------------------------------------------------
    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            self._refuse_if_draining()
            epsilon = check_epsilon(request.epsilon, "epsilon")
            served = await self._acquire(request.model, request.version if request.HasField("version") else None)
            try:
                item = self._predict_item(request, served, epsilon)
                result = await served.batcher.submit(item)
            finally:
                served.release()
            response = pb.PredictResponse(model=served.name, version=served.version, actions=result.actions.tolist())
            encode_tensor(result.q_values, response.q_values)
            if result.hidden is not None:
                encode_hidden(result.hidden, response.hidden)
        except Exception as exc:
            await self._fail(context, "Predict", exc)
        self.metrics.record("Predict", "OK")
        self._predict_latency.observe(time.perf_counter() - started)
        return response

    def _predict_item(self, request: pb.PredictRequest, served: ServedModel, epsilon: float) -> WorkItem:
        obs = decode_observations(request.observations, obs_dim=served.obs_dim)
        batch = obs.shape[0]
        if batch > self.config.max_predict_batch:
            raise RequestError(
                SC.INVALID_ARGUMENT,
                f"observations: at most {self.config.max_predict_batch} rows per Predict, got {batch}; split the batch",
            )
        mask = decode_action_mask(
            request.action_mask if request.HasField("action_mask") else None, batch=batch, action_dim=served.action_dim
        )
        hidden = None
        if request.HasField("hidden"):
            if not served.is_recurrent:
                raise RequestError(
                    SC.INVALID_ARGUMENT,
                    f"hidden: model {served.name!r} is a feed-forward (simple) network and takes no hidden state",
                )
            hidden = decode_hidden(request.hidden.h, request.hidden.c, batch=batch, hidden_dim=served.hidden_dim)
        seed = request.seed if request.HasField("seed") else None
        return WorkItem(obs, epsilon, mask, _generator(seed), hidden=hidden, return_hidden=served.is_recurrent)

    # ---- StreamEpisode ---------------------------------------------------------------------------
    async def StreamEpisode(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        session: Session | None = None
        try:
            while True:
                if session is not None:
                    session.reading = True
                try:
                    request = await context.read()
                finally:
                    if session is not None:
                        session.reading = False
                if request is grpc.aio.EOF:
                    break
                kind = request.WhichOneof("kind")
                if kind == "step":
                    if session is None:
                        raise RequestError(SC.FAILED_PRECONDITION, "step before start: send an EpisodeStart first")
                    await context.write(await self._step(session, request.step))
                    if self.draining:
                        raise RequestError(SC.UNAVAILABLE, "server is shutting down; the episode state is gone")
                elif kind == "start":
                    if session is not None:
                        raise RequestError(
                            SC.FAILED_PRECONDITION,
                            f"second start on stream {session.session_id}: one stream is one episode run; "
                            "open a new stream",
                        )
                    session = await self._start(request.start)
                    session.task = asyncio.current_task()
                    await context.write(self._started(session))
                else:
                    raise RequestError(SC.INVALID_ARGUMENT, "empty StreamEpisodeRequest: set start or step")
        except asyncio.CancelledError:
            reason = session.end_reason if session is not None else None
            if reason is None:  # the client went away
                self.metrics.record("StreamEpisode", "CANCELLED")
                raise
            self._close(session)
            await self._fail(context, "StreamEpisode", RequestError(SC[reason[0]], reason[1]))
        except Exception as exc:
            self._close(session)  # free the state before answering
            await self._fail(context, "StreamEpisode", exc)
        finally:
            self._close(session)
        self.metrics.record("StreamEpisode", "OK")

    def _close(self, session: Session | None) -> None:
        if session is not None:
            self.sessions.close(session.session_id)

    async def _start(self, start: pb.EpisodeStart) -> Session:
        self._refuse_if_draining()
        epsilon = check_epsilon(start.epsilon, "start.epsilon")
        if not 1 <= start.num_envs <= self.config.max_envs:
            raise RequestError(
                SC.INVALID_ARGUMENT,
                f"start.num_envs: expected 1..{self.config.max_envs} environments, got {start.num_envs}",
            )
        served = await self._acquire(start.model, start.version if start.HasField("version") else None)
        try:
            session = self.sessions.open(
                served, start.num_envs, epsilon, start.seed if start.HasField("seed") else None
            )
        except BaseException:
            served.release()
            raise
        log.debug("stream %s started on %s v%d with %d envs", session.session_id, served.name, served.version,
                  start.num_envs)  # fmt: skip
        return session

    def _started(self, session: Session) -> pb.StreamEpisodeResponse:
        m = session.model
        return pb.StreamEpisodeResponse(
            started=pb.EpisodeStarted(
                session_id=session.session_id, model=m.name, version=m.version, num_envs=session.num_envs,
                obs_dim=m.obs_dim, action_dim=m.action_dim, recurrent=m.is_recurrent,
            )
        )  # fmt: skip

    async def _step(self, session: Session, step: pb.EpisodeStep) -> pb.StreamEpisodeResponse:
        began = time.perf_counter()
        served, n = session.model, session.num_envs
        obs = decode_observations(step.observations, obs_dim=served.obs_dim, batch=n)
        reset = None
        if len(step.reset) not in (0, n):
            raise RequestError(
                SC.INVALID_ARGUMENT,
                f"step.reset: expected {n} flags (one per environment) or none, got {len(step.reset)}",
            )
        if session.fresh:
            reset = torch.ones(n, dtype=torch.bool)
            session.fresh = False
        elif len(step.reset) and any(step.reset):
            reset = torch.tensor(list(step.reset), dtype=torch.bool)
        mask = decode_action_mask(
            step.action_mask if step.HasField("action_mask") else None, batch=n, action_dim=served.action_dim
        )
        epsilon = check_epsilon(step.epsilon, "step.epsilon") if step.HasField("epsilon") else session.epsilon
        item = WorkItem(
            obs, epsilon, mask, session.generator, slot_index=session.slot_index, slot_limit=session.slot_limit,
            reset=reset,
            is_cancelled=lambda: session.closed,
        )  # fmt: skip
        result = await served.batcher.submit(item)
        session.touch()
        response = pb.StreamEpisodeResponse()
        out = response.step
        out.step_index = session.step_index
        out.actions.extend(result.actions.tolist())
        encode_tensor(result.q_values, out.q_values)
        out.model = served.name
        out.version = served.version
        session.step_index += 1
        self._step_latency.observe(time.perf_counter() - began)
        return response
