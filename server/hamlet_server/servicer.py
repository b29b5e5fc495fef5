"""The hamlet.v1.InferenceService servicer: protobuf <-> domain, and domain errors -> gRPC status codes.

The work lives below: `ModelRepository` (which version), `StreamTable` (a stream's whole life: limits,
timeouts, typed endings, freeing), `StepBatcher` (one forward for many requests), `tensor_codec`
(validated tensors) and `status` (exception -> code, message, error reason). A bad request ends only its
own call or stream, with a status whose message says what was expected and what came.

`add_to_server` registers the service with deserializers that turn undecodable bytes into a `Malformed`
marker, so garbage gets INVALID_ARGUMENT (MALFORMED_MESSAGE) instead of grpc's UNKNOWN/INTERNAL, and notes
when each call arrives (`InferenceServicer.last_arrival`: a drain stops the server once calls stop coming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import model_pb2
from hamlet_server.artifacts import ArtifactStore, artifact_responses
from hamlet_server.batcher import WorkItem
from hamlet_server.budget import InflightBudget, InflightBudgetError, tensor_bytes
from hamlet_server.config import ServerConfig
from hamlet_server.logs import bind_log_context
from hamlet_server.memory import MemoryTrimmer
from hamlet_server.metrics import ServerMetrics
from hamlet_server.repository import ModelLoadError, ModelRepository, ServedModel, UnknownVersionError
from hamlet_server.sessions import check_num_envs, check_step_index
from hamlet_server.snapshot_keys import SnapshotKeys
from hamlet_server.snapshots import open_snapshot, restore, take_snapshot
from hamlet_server.status import RequestError, rich_status, status_for, truncate
from hamlet_server.streams import Ending, EndReason, EpisodeStream, Phase, SessionLimitError, StreamTable
from hamlet_server.tensor_codec import (
    decode_action_mask,
    decode_hidden,
    decode_observations,
    encode_hidden,
    encode_tensor,
)
from hamlet_server.watch import Watcher, WatchHub
from townlet.inference.validation import check_epsilon
from townlet.inference.version import package_version

__all__ = [
    "Held",
    "InferenceServicer",
    "Malformed",
    "add_to_server",
    "budgeted",
    "lenient",
    "metadata_to_proto",
    "refuse_oversized",
    "server_version",
]

log = logging.getLogger(__name__)
SC = grpc.StatusCode
_FINAL_WRITE_TIMEOUT = 1.0  # seconds the in-band EpisodeEnded may wait for a client that does not read
_CANCEL_GRACE = 0.01  # seconds after a stream's EOF in which a cancellation still counts as one
_REFUSAL_READ_TIMEOUT = 1.0  # seconds a refused stream may take to send its first message (see _refuse_open)


@dataclass(frozen=True)
class Malformed:
    """What a request deserializer returns for bytes that do not parse as the expected message."""

    message_type: str
    error: str


def lenient(parse: Callable[[bytes], Any], message_type: str) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Malformed(message_type, str(exc))

    return deserialize


@dataclass(frozen=True)
class Held:
    """A Predict request whose bytes the in-flight budget holds from the moment gRPC handed them over (the
    handler gives them back), or, with `refusal` set, one refused before it was even parsed."""

    request: Any
    nbytes: int
    refusal: str = ""


def budgeted(parse: Callable[[bytes], Any], budget: InflightBudget) -> Callable[[bytes], Held]:
    """A deserializer that counts the message's bytes against `budget` before parsing it: over the budget,
    nothing is parsed or decoded (RESOURCE_EXHAUSTED INFLIGHT_BUDGET), so a burst cannot pile up copies."""

    def deserialize(data: bytes) -> Held:
        try:
            budget.acquire(len(data))
        except InflightBudgetError as exc:
            return Held(None, 0, str(exc))
        try:
            return Held(parse(data), len(data))
        except BaseException:
            budget.release(len(data))
            raise

    return deserialize


_FRAMES_DROPPED_TAG = b"\x48"  # WatchEpisodesResponse.frames_dropped: field 9, varint


def _frames_dropped_field(count: int) -> bytes:
    """WatchEpisodesResponse.frames_dropped on the wire, to append to a serialized frame (b"" for 0, the
    proto3 default). Appending is how protobuf merges: the field reads as this value."""
    if not count:
        return b""
    varint = bytearray()
    while count > 0x7F:
        varint.append(count & 0x7F | 0x80)
        count >>= 7
    varint.append(count)
    return _FRAMES_DROPPED_TAG + bytes(varint)


def _reject_malformed(request: Any) -> None:
    if isinstance(request, Malformed):
        raise RequestError(
            SC.INVALID_ARGUMENT,
            f"the request bytes are not a valid hamlet.v1.{request.message_type} ({request.error}); "
            "send messages serialized from the hamlet.v1 protos",
            "MALFORMED_MESSAGE",
        )


_ROW_BYTES = 16  # most bytes a response spends per row beside its tensors (an action is a varint of at most 10)
_FIXED_BYTES = 4096  # the rest: model name (a directory name), shapes, field tags


def refuse_oversized(response: Message, limit: int, rows: int, tensor_bytes: int, field: str, fix: str) -> None:
    """Refuse a response gRPC would not send (over --max-message-mb) as the request's fault, INVALID_ARGUMENT
    (RESPONSE_TOO_LARGE), before gRPC fails the send: `rows` is what the request asked for, `tensor_bytes` the
    response's raw tensor bytes (read off the arrays: reading a bytes field back copies it), `field` the request
    field to name, `fix` what to change (``{fit}`` is filled with how many rows fit). Sizes the message only when
    a cheap upper bound is over the limit: upb's ByteSize serializes it (~30 us at 256 rows of Q-values and (h, c))."""
    if tensor_bytes + _ROW_BYTES * rows + _FIXED_BYTES <= limit:
        return
    size = response.ByteSize()
    if size > limit:
        fit = max(1, rows * (limit - _FIXED_BYTES) // size)  # what is not per row takes at most _FIXED_BYTES
        raise RequestError(
            SC.INVALID_ARGUMENT,
            f"{field}: the response for {rows} rows would be {size} bytes, over this server's message limit of "
            f"{limit} bytes (--max-message-mb {limit >> 20}); {fix.format(fit=fit)}",
            "RESPONSE_TOO_LARGE",
        )


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register hamlet.v1.InferenceService on `server` with lenient request deserializers."""
    messages: dict[str, tuple[Any, Any]] = {
        "ListModels": (pb.ListModelsRequest, pb.ListModelsResponse),
        "GetModelMetadata": (pb.GetModelMetadataRequest, pb.GetModelMetadataResponse),
        "GetServerInfo": (pb.GetServerInfoRequest, pb.GetServerInfoResponse),
        "ListSessions": (pb.ListSessionsRequest, pb.ListSessionsResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _noting_arrival(servicer, getattr(servicer, name)),
            request_deserializer=lenient(request.FromString, request.__name__),
            response_serializer=response.SerializeToString,
        )
        for name, (request, response) in messages.items()
    }
    handlers["Predict"] = grpc.unary_unary_rpc_method_handler(
        _noting_arrival(servicer, servicer.Predict),
        request_deserializer=budgeted(lenient(pb.PredictRequest.FromString, "PredictRequest"), servicer.budget),
        response_serializer=pb.PredictResponse.SerializeToString,
    )
    handlers["StreamEpisode"] = grpc.stream_stream_rpc_method_handler(
        _noting_arrival(servicer, servicer.StreamEpisode),
        request_deserializer=lenient(pb.StreamEpisodeRequest.FromString, "StreamEpisodeRequest"),
        response_serializer=pb.StreamEpisodeResponse.SerializeToString,
    )
    handlers["WatchEpisodes"] = grpc.unary_stream_rpc_method_handler(
        _noting_arrival(servicer, servicer.WatchEpisodes),
        request_deserializer=lenient(pb.WatchEpisodesRequest.FromString, "WatchEpisodesRequest"),
        response_serializer=bytes,  # the servicer writes frames serialized once for all their watchers
    )
    handlers["GetModelArtifact"] = grpc.unary_stream_rpc_method_handler(
        _noting_arrival(servicer, servicer.GetModelArtifact),
        request_deserializer=lenient(pb.GetModelArtifactRequest.FromString, "GetModelArtifactRequest"),
        response_serializer=pb.GetModelArtifactResponse.SerializeToString,
    )
    service = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def _noting_arrival(servicer: InferenceServicer, method: Callable[..., Any]) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        servicer.last_arrival = time.monotonic()
        return await method(request, context)

    return handle


server_version = package_version
"""The installed hamlet-server version ("unknown" when it is not installed)."""


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


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """hamlet.v1.InferenceService on grpc.aio."""

    def __init__(
        self,
        repository: ModelRepository,
        streams: StreamTable,
        config: ServerConfig,
        metrics: ServerMetrics,
        *,
        backend: str = "torch",
    ) -> None:
        self.repository = repository
        self.streams = streams
        self.config = config
        self.metrics = metrics
        self.draining = False
        self.last_arrival = 0.0  # time.monotonic() when the newest call arrived
        self.snapshot_keys: SnapshotKeys | None = None  # --snapshot-key-file: signs and checks episode snapshots
        self.backend = backend  # the resolved backend (`auto` decided by the server)
        self.watch = WatchHub(max_watchers=config.max_watchers, fps=config.watch_fps)
        self.budget = InflightBudget(config.max_inflight_bytes)  # request bytes of the calls in progress
        self.trimmer = MemoryTrimmer(config.trim_after_mb * 1024 * 1024)  # memory back after a burst
        self.artifacts = ArtifactStore()  # verified ONNX exports for GetModelArtifact
        self._step_latency = metrics.latency.labels("StreamEpisode.step")
        self._step_latency_by_model: dict[str, Any] = {}
        self.step_tracer: Callable[[int, float, float], None] | None = None  # --tracing: CallTracing.step
        self._predict_latency = metrics.latency.labels("Predict")

    # ---- helpers ---------------------------------------------------------------------------------
    def _model_step_latency(self, model: str) -> Any:
        """The `hamlet_stream_step_seconds` child of ``model``, looked up once (labels() locks a dict)."""
        child = self._step_latency_by_model.get(model)
        if child is None:
            child = self._step_latency_by_model[model] = self.metrics.step_latency.labels(model)
        return child

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], method: str, exc: BaseException) -> None:
        code, message, reason = status_for(exc)
        self.metrics.record(method, code.name)
        bind_log_context(peer=context.peer())
        log.log(logging.ERROR if code is SC.INTERNAL else logging.DEBUG, "%s: %s %s", method, code.name, message)
        await context.abort_with_status(rich_status(code, message, reason))

    def _refuse_if_draining(self) -> None:
        if self.draining:
            raise RequestError(SC.UNAVAILABLE, "server is shutting down; retry on another replica", "SERVER_DRAINING")

    # ---- ListModels / GetModelMetadata -----------------------------------------------------------
    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            _reject_malformed(request)
        except RequestError as exc:
            await self._fail(context, "ListModels", exc)
        repo = self.repository
        response = pb.ListModelsResponse(default_model=repo.default_model)
        for name in repo.names():
            latest = repo.latest(name)
            response.models.add(
                name=name, versions=repo.listed_versions(name), loaded_versions=repo.loaded_versions(name),
                latest_version=latest.version, obs_dim=latest.obs_dim, action_dim=latest.action_dim,
                network_type=model_pb2.NETWORK_TYPE_RECURRENT if latest.is_recurrent else model_pb2.NETWORK_TYPE_SIMPLE,
            )  # fmt: skip
        self.metrics.record("ListModels", "OK")
        return response

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            _reject_malformed(request)
            version = request.version if request.HasField("version") else None
            served = await self.repository.acquire(request.model, version)
            try:
                response = pb.GetModelMetadataResponse(metadata=metadata_to_proto(served))
            finally:
                served.release()
        except Exception as exc:
            await self._fail(context, "GetModelMetadata", exc)
        self.metrics.record("GetModelMetadata", "OK")
        return response

    async def GetServerInfo(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        c = self.config
        self.metrics.record("GetServerInfo", "OK")
        return pb.GetServerInfoResponse(
            server_version=package_version(), max_envs=c.max_envs, max_predict_batch=c.max_predict_batch,
            max_message_bytes=c.max_message_bytes, session_ttl_seconds=c.session_ttl,
            start_timeout_seconds=c.start_timeout, max_sessions=c.max_sessions, max_slots=c.max_slots,
            device=self.repository.device, backend=self.backend,
        )  # fmt: skip

    # ---- ListSessions / WatchEpisodes (--enable-watch) ------------------------------------------
    def _require_watch(self) -> None:
        if not self.config.enable_watch:
            raise RequestError(
                SC.FAILED_PRECONDITION,
                "watching episodes is off on this server; start it with --enable-watch (HAMLET_ENABLE_WATCH=true)",
                "WATCH_DISABLED",
            )

    async def ListSessions(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            _reject_malformed(request)
            self._require_watch()
        except Exception as exc:
            await self._fail(context, "ListSessions", exc)
        response = pb.ListSessionsResponse()
        for stream in self.streams.all():
            session = stream.session
            if session is not None and not session.closed:
                m = session.model
                response.sessions.add(
                    session_id=stream.stream_id, model=m.name, version=m.version, num_envs=session.num_envs,
                    obs_dim=m.obs_dim, action_dim=m.action_dim, step_index=session.step_index,
                )  # fmt: skip
        self.metrics.record("ListSessions", "OK")
        return response

    async def WatchEpisodes(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:  # type: ignore[override]
        try:
            _reject_malformed(request)
            self._require_watch()
            if request.session_id and request.session_id not in self.streams:
                raise RequestError(
                    SC.NOT_FOUND, f"no open stream {truncate(request.session_id, 80)!r}; see ListSessions",
                    "UNKNOWN_SESSION",
                )  # fmt: skip
            watcher = self.watch.subscribe(request.session_id)
        except Exception as exc:
            await self._fail(context, "WatchEpisodes", exc)
        try:
            stalled = await self._send_frames(watcher, context)
        finally:
            self.watch.unsubscribe(watcher)
        if stalled is not None:
            await self._fail(context, "WatchEpisodes", stalled)
        self.metrics.record("WatchEpisodes", "OK")

    # ---- GetModelArtifact (the logic: hamlet_server.artifacts) ------------------------------------
    async def GetModelArtifact(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:  # type: ignore[override]
        try:
            _reject_malformed(request)
            self._refuse_if_draining()
            responses = await artifact_responses(
                self.artifacts, self.repository, request,
                max_message_bytes=self.config.max_message_bytes, metadata=metadata_to_proto,
            )  # fmt: skip
        except Exception as exc:
            await self._fail(context, "GetModelArtifact", exc)
        for response in responses:
            await context.write(response)
        self.metrics.record("GetModelArtifact", "OK")

    async def _send_frames(self, watcher: Watcher, context: grpc.aio.ServicerContext[Any, Any]) -> RequestError | None:
        """Write the watcher's frames until its watch is over (None), or until none went out for
        --watch-timeout: nothing to show, or a watcher that does not read (the error to end it with). One
        timer per frame, not a task (`asyncio.wait_for`): this runs for every frame of every watcher."""
        timeout, loop, task = self.config.watch_timeout, asyncio.get_running_loop(), asyncio.current_task()
        stalled = False

        def stall() -> None:
            nonlocal stalled
            stalled = True
            if task is not None:
                task.cancel()

        try:
            while True:
                timer = loop.call_later(timeout, stall)
                try:
                    if (frame := await watcher.next()) is None:
                        return None
                    await context.write(frame + _frames_dropped_field(watcher.frames_dropped))
                finally:
                    timer.cancel()
        except asyncio.CancelledError:
            if not stalled:
                raise
            if task is not None and hasattr(task, "uncancel"):  # Python 3.11+: this cancel was ours, handled
                task.uncancel()
        return RequestError(
            SC.DEADLINE_EXCEEDED,
            f"the watch delivered no frame for {timeout:g} s (--watch-timeout): the stream sent no step, or this "
            "watcher read none; watch again to go on",
            "WATCH_IDLE",
        )

    # ---- Predict ---------------------------------------------------------------------------------
    async def Predict(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        held = request if isinstance(request, Held) else Held(request, 0)
        try:
            return await self._predict(held, context)
        finally:  # the request's bytes leave the budget however the call ends
            self.budget.release(held.nbytes)
            self.trimmer.note(held.nbytes)

    async def _predict(self, held: Held, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter()
        request = held.request
        try:
            if held.refusal:
                raise InflightBudgetError(held.refusal)
            _reject_malformed(request)
            response = await self.predict(request)
        except Exception as exc:
            await self._fail(context, "Predict", exc)
        self.metrics.record("Predict", "OK")
        self._predict_latency.observe(time.perf_counter() - started)
        return response

    async def predict(self, request: pb.PredictRequest) -> pb.PredictResponse:
        """Predict without the call around it: raises what `status_for` maps (the v2 ModelInfer calls it too)."""
        self._refuse_if_draining()
        epsilon = check_epsilon(request.epsilon, "epsilon")
        served = await self.repository.acquire(request.model, request.version if request.HasField("version") else None)
        try:
            item = self._predict_item(request, served, epsilon)
            result = await served.batcher.submit(item)
        finally:
            served.release()
        response = pb.PredictResponse(model=served.name, version=served.version, actions=result.actions.tolist())
        encode_tensor(result.q_values, response.q_values)
        if result.hidden is not None:
            encode_hidden(result.hidden, response.hidden)
        tensors = result.q_values.nbytes + sum(part.nbytes for part in result.hidden or ())
        refuse_oversized(response, self.config.max_message_bytes, len(response.actions), tensors, "obs",
                         "send at most {fit} rows per Predict, or raise --max-message-mb")  # fmt: skip
        return response

    def _predict_item(self, request: pb.PredictRequest, served: ServedModel, epsilon: float) -> WorkItem:
        obs = decode_observations(request.observations, obs_dim=served.obs_dim)
        batch = obs.shape[0]
        if batch > self.config.max_predict_batch:
            raise RequestError(
                SC.INVALID_ARGUMENT,
                f"obs: at most {self.config.max_predict_batch} rows per Predict, got {batch}; split the batch",
                "BATCH_LIMIT",
            )
        mask = decode_action_mask(
            request.action_mask if request.HasField("action_mask") else None, batch=batch, action_dim=served.action_dim
        )
        hidden = None
        if request.HasField("hidden"):
            hidden_dim = served.hidden_dim if served.is_recurrent else None  # None: refused as the library does
            hidden = decode_hidden(request.hidden.h, request.hidden.c, batch=batch, hidden_dim=hidden_dim)
        seed = request.seed if request.HasField("seed") else None
        generator = served.batcher.ops.new_generator(seed)  # the backend's kind: what its library predict draws
        return WorkItem(obs, epsilon, mask, generator, hidden=hidden, return_hidden=served.is_recurrent)

    # ---- StreamEpisode ---------------------------------------------------------------------------
    async def StreamEpisode(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:  # type: ignore[override]
        try:
            self._refuse_if_draining()
            stream = self.streams.open(asyncio.current_task())
        except (RequestError, SessionLimitError) as exc:
            await self._refuse_open(context, exc)
        bind_log_context(session=stream.stream_id, peer=context.peer())  # this stream's task only
        try:
            ending = await self._run(stream, context)
        except asyncio.CancelledError:
            ending = Ending.client_cancelled()
            self._ended(stream, ending)
            raise
        snapshot = None
        if ending.reason is EndReason.SERVER_DRAINING and stream.session is not None:
            snapshot = take_snapshot(stream.session, self.snapshot_keys)  # before the rows are freed
        self._ended(stream, ending)
        if ending.in_band:
            # After an interrupted write gRPC still holds that send: a second write would fail. The client
            # was not reading anyway; it gets the status (and its details) alone. A stream drained before it
            # started gets the status alone too: with no response sent, the client's gRPC may retry the open
            # on another replica (service config), as it does a refused Predict.
            unstarted_drain = ending.reason is EndReason.SERVER_DRAINING and stream.session is None
            in_band = stream.phase is not Phase.WRITING and not unstarted_drain
            await self._send_end(context, ending, in_band=in_band, snapshot=snapshot)

    async def _refuse_open(self, context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
        """Refuse a new stream (session limit, drain) with its status alone, after its first message (at most
        `_REFUSAL_READ_TIMEOUT` s): a refusal that overtakes the client's write of its start makes grpcio's
        asyncio client lose the status (it reports INTERNAL "Internal error from Core" instead)."""
        with contextlib.suppress(asyncio.TimeoutError, grpc.RpcError):
            await asyncio.wait_for(context.read(), _REFUSAL_READ_TIMEOUT)
        await self._fail(context, "StreamEpisode", exc)

    async def _run(self, stream: EpisodeStream, context: grpc.aio.ServicerContext[Any, Any]) -> Ending:
        """Serve the stream until it ends; returns how. Raises CancelledError only when the client left."""
        try:
            while stream.ending is None:
                stream.enter(Phase.READING if stream.started else Phase.OPENED)
                request = await context.read()
                stream.enter(Phase.STEPPING)
                if request is grpc.aio.EOF:
                    # A cancelled (or killed) client also reads as EOF here, and grpc cancels this task right
                    # after (usually in the same loop iteration; later on a busy loop): a short wait tells a
                    # half-close from a cancel, at the cost of 10 ms at the end of a closed episode.
                    await asyncio.sleep(_CANCEL_GRACE)
                    return Ending.client_closed()
                response = await self._handle(stream, request)  # a step in flight is answered even if the
                stream.enter(Phase.WRITING)  # stream was ended meanwhile (drain); then the loop stops
                await context.write(response)
                stream.enter(Phase.STEPPING)  # written: between messages, nothing of ours is in flight
                if self.draining:
                    self.streams.end(stream, Ending.draining())
            return stream.ending
        except asyncio.CancelledError:
            if stream.ending is None:
                raise
            return stream.ending
        except Exception as exc:
            code, message, reason = status_for(exc)
            if reason == "SERVER_DRAINING":  # a start that came in after the drain began
                return Ending.draining()
            why = EndReason.SERVER_ERROR if code is SC.INTERNAL else EndReason.BAD_REQUEST
            if code is SC.RESOURCE_EXHAUSTED:
                why = EndReason.EVICTED_CAPACITY
            return Ending(why, code, message, reason)

    async def _handle(self, stream: EpisodeStream, request: Any) -> pb.StreamEpisodeResponse:
        _reject_malformed(request)
        kind = request.WhichOneof("kind")
        if kind == "step":
            if stream.session is None:
                raise RequestError(SC.FAILED_PRECONDITION, "step before start: send an EpisodeStart first",
                                   "STEP_BEFORE_START")  # fmt: skip
            step_bytes = tensor_bytes(
                request.step.observations, request.step.action_mask, most=self.config.max_message_bytes
            )
            try:
                with self.budget.hold(step_bytes):
                    return await self._step(stream, request.step)
            finally:
                self.trimmer.note(step_bytes)
        if kind == "start":
            if stream.session is not None:
                raise RequestError(
                    SC.FAILED_PRECONDITION,
                    f"second start on stream {stream.stream_id}: one stream is one episode run; open a new stream",
                    "SECOND_START",
                )
            await self._start(stream, request.start)
            response = self._started(stream)
            bind_log_context(model=response.started.model, version=response.started.version)
            return response
        raise RequestError(SC.INVALID_ARGUMENT, "empty StreamEpisodeRequest: set start or step", "EMPTY_REQUEST")

    @staticmethod
    def _frame(stream_id: str, step: pb.EpisodeStep, out: pb.EpisodeStepResult) -> bytes:
        """A WatchEpisodesResponse serialized once for all of the frame's watchers (without frames_dropped)."""
        frame = pb.WatchEpisodesResponse(
            session_id=stream_id, model=out.model, version=out.version, step_index=out.step_index,
            observations=step.observations, q_values=out.q_values, actions=out.actions, reset=step.reset,
        )  # fmt: skip
        serialized: bytes = frame.SerializeToString()
        return serialized

    def _ended(self, stream: EpisodeStream, ending: Ending) -> None:
        """Free the stream's state (before anything is sent), count and log how it ended."""
        self.streams.free(stream)
        self.watch.end(stream.stream_id)
        self.metrics.record("StreamEpisode", ending.code.name)
        self.metrics.stream_ends.labels(ending.reason.value).inc()
        log.log(ending.log_level, "stream %s ended: %s (%s) %s", stream.stream_id, ending.reason.value,
                ending.code.name, ending.message)  # fmt: skip

    async def _send_end(
        self, context: grpc.aio.ServicerContext[Any, Any], ending: Ending, *, in_band: bool, snapshot: Any = None
    ) -> None:
        """The in-band EpisodeEnded (with a snapshot on a drain), then the status. A client that reads
        nothing does not hold us up."""
        if in_band:
            ended = pb.EpisodeEnded(
                reason=f"END_REASON_{ending.reason.name}", message=ending.message,
                status_code=ending.code.value[0], error_reason=ending.error_reason, snapshot=snapshot,
            )  # fmt: skip
            if (size := ended.ByteSize()) > self.config.max_message_bytes:  # gRPC would not send it: end without it
                log.info("stream ended with a %d-byte snapshot, over --max-message-mb: not sent", size)
                ended.ClearField("snapshot")
                ended.message += " (the episode snapshot is over the server's --max-message-mb and was not sent)"
            try:
                await asyncio.wait_for(context.write(pb.StreamEpisodeResponse(ended=ended)), _FINAL_WRITE_TIMEOUT)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception) as exc:  # the client may be gone
                log.debug("EpisodeEnded not delivered: %r", exc)
        await context.abort_with_status(rich_status(ending.code, ending.message, ending.error_reason))

    async def _start(self, stream: EpisodeStream, start: pb.EpisodeStart) -> None:
        self._refuse_if_draining()
        state = None
        if start.HasField("resume_from"):
            state = open_snapshot(
                start.resume_from,
                self.snapshot_keys,
                allow_unsigned=self.config.allow_unsigned_snapshots,
                max_envs=self.config.max_envs,
            )
        num_envs = start.num_envs if state is None or start.num_envs else state.num_envs
        check_num_envs(num_envs, self.config.max_envs, "start.num_envs")
        if state is None:
            epsilon = check_epsilon(start.epsilon, "start.epsilon")
            served = await self.repository.acquire(start.model, start.version if start.HasField("version") else None)
            seed = start.seed if start.HasField("seed") else None
        else:
            epsilon, seed = state.epsilon, None  # checked by open_snapshot like a start's
            served = await self._acquire_for_resume(start, state, num_envs)
        try:
            session = self.streams.start(stream, served, num_envs, epsilon, seed)
            session.snapshot_every = start.snapshot_every or (state.snapshot_every if state is not None else 0)
            if state is not None:
                restore(session, state)
        except BaseException:
            self.streams.free(stream) if stream.session is not None else served.release()
            raise
        log.debug("stream %s %s on %s v%d with %d envs", stream.stream_id, "resumed" if state else "started",
                  served.name, served.version, num_envs)  # fmt: skip

    async def _acquire_for_resume(self, start: pb.EpisodeStart, state: pb.EpisodeState, num_envs: int) -> ServedModel:
        if (start.model and start.model != state.model) or num_envs != state.num_envs:
            raise RequestError(
                SC.INVALID_ARGUMENT,
                f"resume_from: the snapshot is of model {state.model!r} with {state.num_envs} environments; the "
                f"start asks for {start.model or state.model!r} with {num_envs}",
                "SNAPSHOT_MISMATCH",
            )
        try:
            return await self.repository.acquire(state.model, state.version)
        except (UnknownVersionError, ModelLoadError) as exc:
            if not start.allow_other_version:
                raise RequestError(
                    SC.FAILED_PRECONDITION,
                    f"resume_from: this replica cannot serve model {state.model!r} version {state.version} "
                    f"({exc}); set allow_other_version to continue on the latest version",
                    "VERSION_UNAVAILABLE",
                ) from None
        return await self.repository.acquire(state.model, None)

    def _started(self, stream: EpisodeStream) -> pb.StreamEpisodeResponse:
        assert stream.session is not None
        m = stream.session.model
        return pb.StreamEpisodeResponse(
            started=pb.EpisodeStarted(
                session_id=stream.stream_id, model=m.name, version=m.version, num_envs=stream.session.num_envs,
                obs_dim=m.obs_dim, action_dim=m.action_dim, recurrent=m.is_recurrent,
                resumed=stream.session.step_index > 0 or stream.session.pending_hidden is not None,
                step_index=stream.session.step_index,
            )
        )  # fmt: skip

    async def _step(self, stream: EpisodeStream, step: pb.EpisodeStep) -> pb.StreamEpisodeResponse:
        began = time.perf_counter()
        session = stream.session
        assert session is not None
        served, n = session.model, session.num_envs
        check_step_index(session.step_index, "step")  # OUT_OF_RANGE STEP_LIMIT after 2**53 steps
        obs = decode_observations(step.observations, obs_dim=served.obs_dim, batch=n)
        reset = None
        if len(step.reset) not in (0, n):
            raise RequestError(
                SC.INVALID_ARGUMENT,
                f"step.reset: expected {n} flags (one per environment) or none, got {len(step.reset)}",
                "BAD_RESET",
            )
        if session.fresh:
            reset = np.ones(n, dtype=bool)
            session.fresh = False
        elif len(step.reset) and any(step.reset):
            reset = np.array(step.reset, dtype=bool)
        mask = decode_action_mask(
            step.action_mask if step.HasField("action_mask") else None, batch=n, action_dim=served.action_dim
        )
        epsilon = check_epsilon(step.epsilon, "step.epsilon") if step.HasField("epsilon") else session.epsilon
        hidden, session.pending_hidden = session.pending_hidden, None
        if hidden is not None and reset is not None:  # a resumed episode: its first step starts from the snapshot
            keep = ~reset.reshape(1, -1, 1)
            hidden = (hidden[0] * keep, hidden[1] * keep)
        item = WorkItem(
            obs, epsilon, mask, session.generator, slot_index=session.slot_index, slot_limit=session.slot_limit,
            reset=reset, hidden=hidden,
            is_cancelled=lambda: session.closed,
        )  # fmt: skip
        result = await served.batcher.submit(item)
        response = pb.StreamEpisodeResponse()
        out = response.step
        out.step_index = session.step_index
        out.actions.extend(result.actions.tolist())
        encode_tensor(result.q_values, out.q_values)
        out.model = served.name
        out.version = served.version
        if self.watch.active:
            self.watch.publish(stream.stream_id, lambda: self._frame(stream.stream_id, step, out))
        session.step_index += 1
        if session.snapshot_every and session.step_index % session.snapshot_every == 0:
            snapshot = take_snapshot(session, self.snapshot_keys)
            out.snapshot.CopyFrom(snapshot)
            tensors = result.q_values.nbytes + len(snapshot.state)
            refuse_oversized(response, self.config.max_message_bytes, n, tensors, "start.snapshot_every",
                             "snapshot streams of at most {fit} environments, or raise --max-message-mb")  # fmt: skip
        elapsed = time.perf_counter() - began
        self._step_latency.observe(elapsed)
        self._model_step_latency(served.name).observe(elapsed)
        if self.step_tracer is not None:
            self.step_tracer(out.step_index, began, elapsed)
        return response
