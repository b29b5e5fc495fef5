"""`AsyncHamletClient`: the asyncio client (many simulators in one process), same surface as `HamletClient`.

    async with AsyncHamletClient("localhost:50051") as client:
        result = await client.predict(obs)
        async with client.episode(num_envs=8, seed=0) as episode:
            step = await episode.step(obs_batch)

Create the client inside the running event loop (gRPC's asyncio channel binds to it). Any number of
coroutines may share one client; an `AsyncEpisode` serialises its own steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from hamlet_client.client import DEFAULT_TIMEOUT, _after_close, _check_timeout
from hamlet_client.connection import auth_metadata, channel_target, open_channel
from hamlet_client.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    HamletError,
    InternalError,
    UnavailableError,
    error_for_code,
    from_rpc_error,
    reason_in,
)
from hamlet_client.messages import (
    ended_error,
    episode_start_request,
    episode_step_request,
    metadata_request,
    predict_request,
)
from hamlet_client.proto import inference_service_pb2 as service_pb2
from hamlet_client.results import (
    ModelInfo,
    ModelMetadata,
    Prediction,
    ServerInfo,
    SessionInfo,
    StepResult,
    WatchFrame,
    metadata_from_proto,
    model_infos_from_proto,
    prediction_from_proto,
    server_info_from_proto,
    session_infos_from_proto,
    step_result_from_proto,
    watch_frame_from_proto,
)
from hamlet_client.resume import ResumeState, is_resumable
from hamlet_client.service_config import RetryPolicy
from hamlet_client.stub import async_stub

__all__ = ["AsyncEpisode", "AsyncHamletClient"]

logger = logging.getLogger(__name__)

_Metadata = tuple[tuple[str, str], ...] | None
_OPEN_ATTEMPTS = 3
"""Opens of one episode when grpcio loses the refusal's status (see `AsyncEpisode._open`)."""
_LOST_STATUS = "Internal error from Core"


def _status_lost(error: HamletError) -> bool:
    """Whether ``error`` is grpcio's local stand-in for a status it lost, not an answer of the server."""
    return error.code == grpc.StatusCode.INTERNAL and error.message == _LOST_STATUS and not error.reason


class AsyncHamletClient:
    """asyncio client of a Hamlet Serve server; arguments and methods as `HamletClient`, awaited.

    Use ``async with AsyncHamletClient(...) as client`` or ``await client.close()``.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        token: str | None = None,
        tls: bool | bytes | grpc.ChannelCredentials | None = None,
        timeout: float | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._channel = open_channel(target, tls, options, aio=True, retry=retry)
        self._retry = retry if retry is not None else RetryPolicy()
        self.target = channel_target(target)[0]
        self._timeout = _check_timeout(timeout, DEFAULT_TIMEOUT)
        self._metadata = auth_metadata(token)
        self._stub = async_stub(self._channel)
        self._episodes: set[AsyncEpisode] = set()
        self._closed = False

    async def close(self) -> None:
        """Cancel the open episodes and close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for episode in list(self._episodes):
            episode.cancel()
        await self._channel.close()

    async def __aenter__(self) -> AsyncHamletClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncHamletClient({self.target!r}{', closed' if self._closed else ''})"

    async def predict(
        self,
        obs: Any,
        *,
        model: str | None = None,
        version: int | None = None,
        epsilon: float = 0.0,
        hidden: Any = None,
        seed: int | None = None,
        action_mask: Any = None,
        timeout: float | None = None,
    ) -> Prediction:
        """Actions and Q-values for one observation or a batch; see `HamletClient.predict`."""
        request = predict_request(
            obs, model=model, version=version, epsilon=epsilon, hidden=hidden, seed=seed, action_mask=action_mask
        )
        return prediction_from_proto(await self._unary(self._stub.Predict, request, timeout))

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the server hosts; see `HamletClient.list_models`."""
        response = await self._unary(self._stub.ListModels, service_pb2.ListModelsRequest(), timeout)
        return model_infos_from_proto(response)

    async def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """The limits the server holds clients to (max envs, max Predict batch, message size, session TTL, start
        timeout, ...) and its version."""
        request = service_pb2.GetServerInfoRequest()
        return server_info_from_proto(await self._unary(self._stub.GetServerInfo, request, timeout))

    async def list_sessions(self, *, timeout: float | None = None) -> list[SessionInfo]:
        """The episode streams open on the server; see `HamletClient.list_sessions`."""
        response = await self._unary(self._stub.ListSessions, service_pb2.ListSessionsRequest(), timeout)
        return session_infos_from_proto(response)

    async def watch(self, session_id: str | None = None) -> AsyncIterator[WatchFrame]:
        """Follow running episodes; see `HamletClient.watch`."""
        call = self._stub.WatchEpisodes(
            service_pb2.WatchEpisodesRequest(session_id=session_id or ""), metadata=self._metadata
        )
        try:
            async for frame in call:
                yield watch_frame_from_proto(frame)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    async def metadata(
        self, model: str | None = None, *, version: int | None = None, timeout: float | None = None
    ) -> ModelMetadata:
        """The checkpoint metadata of a model version; see `HamletClient.metadata`."""
        response = await self._unary(self._stub.GetModelMetadata, metadata_request(model, version), timeout)
        return metadata_from_proto(response.metadata)

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        """One call; gRPC retries it per the channel's service config within the deadline."""
        if self._closed:
            raise FailedPreconditionError("the client is closed; create a new AsyncHamletClient")
        try:
            return await method(request, timeout=_check_timeout(timeout, self._timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc

    def episode(
        self,
        model: str | None = None,
        *,
        num_envs: int = 1,
        epsilon: float = 0.0,
        seed: int | None = None,
        version: int | None = None,
        step_timeout: float | None = None,
        stream_timeout: float | None = None,
        resume: bool = False,
        snapshot_every: int | None = None,
        allow_other_version: bool = False,
    ) -> AsyncEpisode:
        """An episode stream, opened by ``async with`` (or ``await episode.start()``); see `HamletClient.episode`
        (``resume=True`` makes it survive a drained or lost replica)."""
        if self._closed:
            raise FailedPreconditionError("the client is closed; create a new AsyncHamletClient")
        every = (1 if resume else 0) if snapshot_every is None else snapshot_every
        start = episode_start_request(
            model=model, version=version, num_envs=num_envs, epsilon=epsilon, seed=seed, snapshot_every=every
        )
        return AsyncEpisode(
            self,
            start,
            step_timeout=_check_timeout(step_timeout, self._timeout),
            stream_timeout=None if stream_timeout is None else _check_timeout(stream_timeout, self._timeout),
            resume=ResumeState(every, allow_other_version) if resume else None,
        )


class AsyncEpisode:
    """A `StreamEpisode` driven from asyncio: ``await step(obs, reset)``; see `Episode` for the semantics.

    The start is sent by ``async with`` (or ``await start()``); its answer fills ``session_id``, ``model``,
    ``version``, ``num_envs``, ``obs_dim``, ``action_dim`` and ``recurrent``.
    """

    session_id: str
    model: str
    version: int
    num_envs: int
    obs_dim: int
    action_dim: int
    recurrent: bool

    def __init__(
        self,
        client: AsyncHamletClient,
        start: service_pb2.StreamEpisodeRequest,
        *,
        step_timeout: float,
        stream_timeout: float | None,
        resume: ResumeState | None = None,
    ) -> None:
        self._client = client
        self._start = start
        self._resume = resume
        self._next_step = 0
        self._step_timeout = step_timeout
        self._stream_timeout = stream_timeout
        self._call: Any = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._end_reason = ""
        # A reader task takes every response as it arrives, so an EpisodeEnded that the server sends while
        # the simulator is busy elsewhere is seen before the next write (which would fail without saying why).
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._ended: Any = None  # the server's EpisodeEnded, once received

    @property
    def closed(self) -> bool:
        """True once the stream has ended (closed, cancelled or failed)."""
        return self._closed

    @property
    def started(self) -> bool:
        """True once the server has answered the start."""
        return self._call is not None and hasattr(self, "session_id")

    @property
    def resumes(self) -> int:
        """How often the episode was reopened from a snapshot (``resume=True``)."""
        return self._resume.resumes if self._resume is not None else 0

    async def start(self) -> AsyncEpisode:
        """Open the stream and send the start; returns self. Called by ``async with``."""
        if self._call is not None:
            raise FailedPreconditionError("the episode was already started")
        await self._open(self._start)
        return self

    async def _open(self, start: service_pb2.StreamEpisodeRequest) -> None:
        """Open the stream with ``start`` (a new episode or a resume) and take the server's answer; a refused
        open raises its typed error (`CapacityExceededError` at the session limit, ...).

        grpcio's asyncio client loses the status when the start's write meets a call the server has already
        refused: it reports INTERNAL "Internal error from Core" instead. A Hamlet server answers a refused open
        only after its start for that reason (docs/SERVING.md, Shutdown); against one that refuses at once (an
        older server) the open is sent again, up to `_OPEN_ATTEMPTS` times, to learn the real answer: nothing
        was started. An open that failed with UNAVAILABLE before any answer (a draining replica, none reachable)
        is sent again under the client's `RetryPolicy`, as `Episode._open` does."""
        policy = self._client._retry
        for attempt in range(1, max(_OPEN_ATTEMPTS, policy.max_attempts) + 1):
            try:
                await self._open_once(start)
                return
            except InternalError as exc:
                if not _status_lost(exc) or attempt >= _OPEN_ATTEMPTS:
                    raise
                logger.debug("episode open: the status was lost in a failed write (attempt %d); opening again", attempt)
            except UnavailableError:
                if attempt >= policy.max_attempts:
                    raise
                await asyncio.sleep(policy.backoff(attempt))

    async def _open_once(self, start: service_pb2.StreamEpisodeRequest) -> None:
        self._closed, self._end_reason, self._ended = False, "", None
        self._responses = asyncio.Queue()
        self._call = self._client._stub.StreamEpisode(timeout=self._stream_timeout, metadata=self._client._metadata)
        self._client._episodes.add(self)
        self._reader = asyncio.get_running_loop().create_task(
            self._read_all(self._call, self._responses), name="hamlet-episode-reader"
        )
        try:
            try:
                await self._call.write(start)
            except (grpc.RpcError, asyncio.InvalidStateError) as exc:  # refused before the start was sent
                raise await self._why_ended("start") from exc
            response = await self._receive("start")
        except BaseException:
            self._finish(cancel=True, reason="the start failed")
            raise
        if response.WhichOneof("kind") != "started":
            self._finish(cancel=True, reason="the server broke the protocol")
            raise InternalError(f"expected EpisodeStarted first, got {response.WhichOneof('kind')}")
        started = response.started
        self.session_id = started.session_id
        self.model = started.model
        self.version = started.version
        self.num_envs = started.num_envs
        self.obs_dim = started.obs_dim
        self.action_dim = started.action_dim
        self.recurrent = started.recurrent
        self._next_step = int(started.step_index)

    async def step(
        self, obs: Any, reset: Any = None, *, action_mask: Any = None, epsilon: float | None = None
    ) -> StepResult:
        """One lock-step: actions and Q-values for every environment; see `Episode.step`."""
        if not self.started:
            raise FailedPreconditionError("the episode is not started: use `async with client.episode(...)`")
        request = episode_step_request(
            obs, num_envs=self.num_envs, reset=reset, action_mask=action_mask, epsilon=epsilon
        )
        async with self._lock:
            try:
                response = await self._exchange(request)
            except HamletError as exc:
                if self._resume is None or not self._resume.can_resume(exc, self._next_step):
                    raise
                response = await self._resume_with(request, exc)
        self._next_step = int(response.step.step_index) + 1
        if self._resume is not None and response.step.HasField("snapshot"):
            self._resume.keep(response.step.snapshot)
        return step_result_from_proto(response.step)

    async def _exchange(self, request: service_pb2.StreamEpisodeRequest) -> service_pb2.StreamEpisodeResponse:
        if self._ended is not None and not self._closed:  # the server already said it ended the stream
            self._finish(cancel=False, reason=f"the server ended the stream: {self._ended.message}")
            raise ended_error(self._ended)
        if self._closed:
            raise FailedPreconditionError(f"episode {self.session_id} is closed ({self._end_reason})")
        try:
            await self._call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            # The server ended the stream meanwhile: its reason is in a response the reader takes.
            self._finish(cancel=False, reason="the server ended the stream")
            raise await self._why_ended("step") from exc
        response = await self._receive("step")
        if response.WhichOneof("kind") != "step":
            self._finish(cancel=True, reason="the server broke the protocol")
            raise InternalError(f"expected an EpisodeStepResult, got {response.WhichOneof('kind')}")
        return response

    async def _resume_with(
        self, request: service_pb2.StreamEpisodeRequest, error: HamletError
    ) -> service_pb2.StreamEpisodeResponse:
        """Reopen from the kept snapshot and send ``request`` again; the last error if no attempt works."""
        assert self._resume is not None
        for wait in self._resume.waits():
            await asyncio.sleep(wait)
            self._finish(cancel=True, reason="resuming")
            try:
                await self._open(self._resume.start_request())
                response = await self._exchange(request)
            except HamletError as exc:
                if not is_resumable(exc):
                    raise
                error = exc
                continue
            self._resume.resumed(self._next_step, self.session_id, error)
            return response
        raise error

    async def _read_all(self, call: Any, responses: asyncio.Queue[Any]) -> None:
        """Reader task of one call: every response into its queue, then EOF or the call's error."""
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                if response.WhichOneof("kind") == "ended" and call is self._call:
                    self._ended = response.ended
                    if self._resume is not None and response.ended.HasField("snapshot"):
                        self._resume.keep(response.ended.snapshot)
                responses.put_nowait(response)
        except grpc.RpcError as exc:
            responses.put_nowait(exc)
            return
        responses.put_nowait(grpc.aio.EOF)

    async def _receive(self, what: str) -> service_pb2.StreamEpisodeResponse:
        """The next response; the server's EpisodeEnded and errors become typed `HamletError`s."""
        try:
            item = await asyncio.wait_for(self._responses.get(), self._step_timeout)
        except asyncio.TimeoutError:
            self._finish(cancel=True, reason="step timed out")
            raise DeadlineExceededError(
                f"episode {what} got no answer within step_timeout={self._step_timeout} s; stream cancelled"
            ) from None
        if isinstance(item, grpc.RpcError) or item is grpc.aio.EOF:
            self._finish(cancel=False, reason="the server ended the stream")
            raise await self._why_ended(what)
        if item.WhichOneof("kind") == "ended":
            self._finish(cancel=False, reason=f"the server ended the stream: {item.ended.message}")
            raise ended_error(item.ended)
        return item  # type: ignore[no-any-return]

    async def _why_ended(self, what: str) -> HamletError:
        """Why the stream ended: the server's in-band EpisodeEnded if the reader got one (trusted over the
        status, which grpc may replace with INTERNAL when it arrives during a write), else the status."""
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=self._step_timeout)
        if self._ended is not None:
            return ended_error(self._ended)
        code = await self._call.code()
        if code is not None and code != grpc.StatusCode.OK:
            details = await self._call.details()
            message = details or f"episode stream ended with {code.name}"
            return error_for_code(code, message, reason_in(await self._call.trailing_metadata()))
        return InternalError(f"the server ended the episode stream before answering the {what}")

    def _finish(self, *, cancel: bool, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._end_reason = reason
        if cancel and self._call is not None:
            self._call.cancel()
        self._client._episodes.discard(self)

    def cancel(self) -> None:
        """End the stream at once (RPC cancelled); the server frees the episode's state. Idempotent."""
        self._finish(cancel=True, reason="cancelled")

    async def close(self, timeout: float | None = None) -> None:
        """End the stream cleanly: half-close and wait (up to ``timeout``, default step_timeout) for the
        server's OK; cancel it if the server does not finish in time. Idempotent."""
        if self._closed or self._call is None:
            self._finish(cancel=False, reason="closed")
            return
        async with self._lock:
            self._closed = True
            self._end_reason = "closed"
            try:
                await asyncio.wait_for(self._drain(), self._step_timeout if timeout is None else timeout)
            except (asyncio.TimeoutError, grpc.RpcError) as exc:
                logger.debug("episode %s: %r while closing; cancelling", self.session_id, exc)
                self._call.cancel()
            finally:
                self._client._episodes.discard(self)

    async def _drain(self) -> None:
        await self._call.done_writing()
        if self._reader is not None:
            await self._reader
        while not self._responses.empty():
            extra = self._responses.get_nowait()
            if isinstance(extra, service_pb2.StreamEpisodeResponse):
                _after_close(self.session_id, extra)
        code = await self._call.code()
        if code != grpc.StatusCode.OK:
            logger.debug("episode %s ended with %s while closing", self.session_id, code)

    async def __aenter__(self) -> AsyncEpisode:
        if self._call is None:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            self.cancel()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self.started else "not started")
        return f"AsyncEpisode({getattr(self, 'session_id', None)!r}, {state})"
