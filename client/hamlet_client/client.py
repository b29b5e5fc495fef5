"""`HamletClient`: the blocking client of a Hamlet Serve server, and its `Episode` streams.

    with HamletClient("localhost:50051") as client:
        result = client.predict(obs)                        # result.actions [B], result.q_values [B, A]
        with client.episode(num_envs=8, seed=0) as episode:
            step = episode.step(obs_batch)                  # step.actions [8]
            step = episode.step(next_obs, reset=dones)

One client holds one gRPC channel; share it between threads (an `Episode` belongs to one thread at a
time: its steps are serialised by a lock).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from hamlet_client.connection import auth_metadata, channel_target, open_channel
from hamlet_client.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    HamletError,
    InternalError,
    UnavailableError,
    error_for_code,
    from_rpc_error,
    reason_from_metadata,
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
from hamlet_client.stub import InferenceStub

if TYPE_CHECKING:
    from hamlet_client.local import LocalPolicy

__all__ = ["DEFAULT_TIMEOUT", "Episode", "HamletClient"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
"""Seconds a unary call (all its retries included) or an episode step may take when no timeout is given."""

_Resp = TypeVar("_Resp")
_Metadata = tuple[tuple[str, str], ...] | None


def _check_timeout(timeout: float | None, default: float) -> float:
    if timeout is None:
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout: expected a number of seconds > 0, got {timeout!r}")
    return float(timeout)


class HamletClient:
    """Blocking client of a Hamlet Serve server.

    Args:
        target: ``"host:port"`` of the server (any gRPC target string), ``"dns:///name:port"`` to balance over
            every address of a name (a Kubernetes headless Service), or a list of ``"ip:port"`` replicas to
            balance over. Balancing is gRPC's ``round_robin``: an episode stays on one replica, unary calls
            spread.
        token: bearer token sent as ``authorization: Bearer <token>`` on every call.
        tls: None/False plaintext; True TLS with the system roots; bytes: PEM root certificates to trust;
            or a `grpc.ChannelCredentials`.
        timeout: default deadline in seconds of each unary call (retries included) and of each episode
            step; None means `DEFAULT_TIMEOUT` (10 s). Every method also takes its own ``timeout``.
        options: extra gRPC channel options, ``[("grpc.keepalive_time_ms", 30000), ...]``.
        retry: gRPC's retries of the idempotent calls (Predict, ListModels, GetModelMetadata, ...) and of an
            episode's open on UNAVAILABLE, in the channel's service config (`RetryPolicy`,
            `hamlet_client.service_config`); ``RetryPolicy(max_attempts=1)`` turns them off. Episode steps
            are never retried.

    The client is thread-safe. Close it with `close` or use it as a context manager; closing cancels
    the episodes still open.
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
        self._channel = open_channel(target, tls, options, aio=False, retry=retry)
        self._retry = retry if retry is not None else RetryPolicy()
        self.target = channel_target(target)[0]
        self._timeout = _check_timeout(timeout, DEFAULT_TIMEOUT)
        self._metadata = auth_metadata(token)
        self._stub = InferenceStub(self._channel)
        self._watchdog = _StepWatchdog()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Cancel the open episodes and close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for episode in self._watchdog.episodes():
            episode.cancel()
        self._channel.close()

    def __enter__(self) -> HamletClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HamletClient({self.target!r}{', closed' if self._closed else ''})"

    # ------------------------------------------------------------------ unary calls

    def predict(
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
        """Actions and Q-values for one observation or a batch (stateless: nothing is kept on the server).

        Args:
            obs: ``[obs_dim]`` or ``[B, obs_dim]`` floats (list or numpy array); one observation is a batch of 1.
            model: model name; None = the server's default model.
            version: model version; None = the latest.
            epsilon: probability of a uniformly random (allowed) action per sample, in [0, 1]; 0 is greedy.
            hidden: recurrent models: ``(h, c)`` each ``[1, B, hidden_dim]`` from the previous call's
                ``result.hidden``; None = zeros (start of an episode).
            seed: seed of this call's random draws (reproducible exploration); None = nondeterministic.
            action_mask: ``[B, action_dim]`` (or ``[action_dim]``) bools, True where an action is allowed.
            timeout: deadline in seconds, retries included; None = the client's.

        Returns:
            `Prediction` with numpy ``actions [B]``, ``q_values [B, A]``, ``hidden`` and the ``model``/``version``.

        Raises:
            InvalidArgumentError: bad input (found here or by the server). ModelNotFoundError: unknown
            model or version. UnavailableError: still unreachable after the retries. DeadlineExceededError.
        """
        request = predict_request(
            obs, model=model, version=version, epsilon=epsilon, hidden=hidden, seed=seed, action_mask=action_mask
        )
        return prediction_from_proto(self._unary(self._stub.Predict, request, timeout))

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the server hosts, with its versions and dimensions (`ModelInfo.is_default` marks the default)."""
        return model_infos_from_proto(self._unary(self._stub.ListModels, service_pb2.ListModelsRequest(), timeout))

    def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """The limits the server holds clients to (max envs, max Predict batch, message size, session TTL, start
        timeout, ...) and its version."""
        request = service_pb2.GetServerInfoRequest()
        return server_info_from_proto(self._unary(self._stub.GetServerInfo, request, timeout))

    def list_sessions(self, *, timeout: float | None = None) -> list[SessionInfo]:
        """The episode streams open on the server (it must run with ``--enable-watch``)."""
        response = self._unary(self._stub.ListSessions, service_pb2.ListSessionsRequest(), timeout)
        return session_infos_from_proto(response)

    def watch(self, session_id: str | None = None) -> Iterator[WatchFrame]:
        """Follow running episodes: a `WatchFrame` per answered step of ``session_id`` (None: of every stream)
        until the stream ends or the server drains. Never slows the watched streams: a slow reader misses
        frames (``frame.frames_dropped``). Break out of the loop to stop; the server needs ``--enable-watch``."""
        call = self._stub.WatchEpisodes(
            service_pb2.WatchEpisodesRequest(session_id=session_id or ""), metadata=self._metadata
        )
        try:
            for frame in call:
                yield watch_frame_from_proto(frame)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise from_rpc_error(exc) from exc
        finally:
            call.cancel()

    def metadata(
        self, model: str | None = None, *, version: int | None = None, timeout: float | None = None
    ) -> ModelMetadata:
        """The checkpoint metadata of a model version (None: the default model, its latest version)."""
        response = self._unary(self._stub.GetModelMetadata, metadata_request(model, version), timeout)
        return metadata_from_proto(response.metadata)

    def local_policy(
        self,
        model: str | None = None,
        *,
        version: int | None = None,
        poll_interval: float | None = 30.0,
        num_threads: int = 1,
        timeout: float | None = None,
    ) -> LocalPolicy:
        """Run a model in this process: fetch its verified ONNX export (sha256 checked) into onnxruntime.

        The returned `hamlet_client.local.LocalPolicy` has this client's ``predict`` and ``episode`` (same
        arguments, same result types) with the LSTM state kept here. Needs ``pip install 'hamlet-client[local]'``.

        Args:
            model: model name; None = the server's default. version: pin a version; None = the latest, and
                follow new ones between episodes. poll_interval: seconds between version checks (made when an
                episode or a predict starts); None = never. num_threads: onnxruntime threads (1 suits these
                small networks). timeout: deadline of each artifact fetch (default: 60 s or the client's).

        Raises:
            ModelNotFoundError, FailedPreconditionError (no verified export), ArtifactIntegrityError (the
            bytes failed the checks), ImportError (onnxruntime is missing).
        """
        from hamlet_client.artifacts import fetch_artifact
        from hamlet_client.local import LocalPolicy

        if self._closed:
            raise FailedPreconditionError("the client is closed; create a new HamletClient")
        fetch_timeout = _check_timeout(timeout, max(self._timeout, 60.0))

        def fetch(name: str, wanted: int | None) -> Any:
            return fetch_artifact(self._stub, name, wanted, metadata=self._metadata, timeout=fetch_timeout)

        return LocalPolicy(
            fetch, lambda name: self.metadata(name).version, model or "", version=version,
            poll_interval=poll_interval, num_threads=num_threads,
        )  # fmt: skip

    def _unary(self, method: Callable[..., _Resp], request: Any, timeout: float | None) -> _Resp:
        """One call; gRPC retries it per the channel's service config within the deadline."""
        if self._closed:
            raise FailedPreconditionError("the client is closed; create a new HamletClient")
        try:
            return method(request, timeout=_check_timeout(timeout, self._timeout), metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        except ValueError as exc:  # grpc raises this on a closed channel
            raise FailedPreconditionError(f"the client's channel is closed: {exc}") from exc

    # ------------------------------------------------------------------ episodes

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
    ) -> Episode:
        """Open a lock-step episode stream over ``num_envs`` environments; use it as a context manager.

        The server keeps each environment's LSTM state between steps and frees it when the stream ends.
        The stream stays on the model version it started with, even when a newer one is loaded.

        Args:
            model: model name; None = the server's default.
            num_envs: environments driven by this stream (the batch of every step).
            epsilon: exploration rate of every step (a step may override it).
            seed: seed of the stream's random draws; None = nondeterministic.
            version: model version; None = the latest.
            step_timeout: seconds the start and each step may take (None: the client's timeout); past it
                the stream is cancelled and the step raises `DeadlineExceededError`.
            stream_timeout: deadline of the whole stream in seconds; None = no limit.
            resume: survive the replica: keep the newest snapshot the server sends and, when the stream is
                drained, lost or timed out, reopen it from that snapshot (on whichever replica the channel
                picks) and send the step again; `Episode.resumes` counts it. Q-values continue exactly.
            snapshot_every: ask for a snapshot every N steps (default with ``resume``: 1, so even a replica
                killed without warning loses no step; 0: only the snapshot a drain sends). Each costs about
                2 x H x 4 bytes per environment (2 KiB at H = 256), plus ~5 KiB for a seeded stream.
            allow_other_version: when resuming on a replica that lacks the version, continue on its latest.

        Raises:
            ModelNotFoundError, InvalidArgumentError, CapacityExceededError, ...: the server refused the start.
        """
        if self._closed:
            raise FailedPreconditionError("the client is closed; create a new HamletClient")
        every = (1 if resume else 0) if snapshot_every is None else snapshot_every
        start = episode_start_request(
            model=model, version=version, num_envs=num_envs, epsilon=epsilon, seed=seed, snapshot_every=every
        )
        return Episode(
            self._stub,
            start,
            metadata=self._metadata,
            step_timeout=_check_timeout(step_timeout, self._timeout),
            stream_timeout=None if stream_timeout is None else _check_timeout(stream_timeout, self._timeout),
            watchdog=self._watchdog,
            resume=ResumeState(every, allow_other_version) if resume else None,
            retry=self._retry,
        )


class Episode:
    """A running `StreamEpisode`: ``step(obs, reset)`` -> actions and Q-values for every environment.

    Made by `HamletClient.episode`, which has already sent the start and received the server's answer
    (``session_id``, ``model``, ``version``, ``num_envs``, ``obs_dim``, ``action_dim``, ``recurrent``).
    Leaving the ``with`` block ends the stream: cleanly (half-close, the server answers OK) when the block
    succeeded, by cancelling it when the block raised. Either way the server frees the episode's state.
    An error from the server ends the stream; later steps raise `FailedPreconditionError`.
    """

    def __init__(
        self,
        stub: InferenceStub,
        start: service_pb2.StreamEpisodeRequest,
        *,
        metadata: _Metadata,
        step_timeout: float,
        stream_timeout: float | None,
        watchdog: _StepWatchdog,
        resume: ResumeState | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._stub = stub
        self._retry = retry if retry is not None else RetryPolicy()
        self._metadata = metadata
        self._stream_timeout = stream_timeout
        self._lock = threading.Lock()
        self._step_timeout = step_timeout
        self._deadline: float | None = None
        self._watchdog = watchdog
        self._resume = resume
        self._next_step = 0
        self._open(start)

    def _open(self, start: service_pb2.StreamEpisodeRequest) -> None:
        """Open the stream with ``start`` (a new episode or a resume) and take the server's answer; an open
        that failed with UNAVAILABLE before any answer (a draining replica refused it, or none was reachable)
        is sent again under the client's `RetryPolicy`: nothing was started (service_config module doc)."""
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                self._open_once(start)
                return
            except UnavailableError:
                if attempt == self._retry.max_attempts:
                    raise
                time.sleep(self._retry.backoff(attempt))

    def _open_once(self, start: service_pb2.StreamEpisodeRequest) -> None:
        self._requests: queue.SimpleQueue[service_pb2.StreamEpisodeRequest | None] = queue.SimpleQueue()
        self._timed_out = False
        self._closed = False
        self._end_reason = ""
        self._requests.put(start)
        self._call = self._stub.StreamEpisode(
            iter(self._requests.get, None), timeout=self._stream_timeout, metadata=self._metadata
        )
        self._watchdog.add(self)
        try:
            response = self._receive("start")
        except BaseException:
            self._finish(cancel=True, reason="the start failed")
            raise
        if response.WhichOneof("kind") == "ended":
            raise self._ended_by_server(response.ended)
        if response.WhichOneof("kind") != "started":
            self._finish(cancel=True, reason="the server broke the protocol")
            raise InternalError(
                f"expected EpisodeStarted as the stream's first response, got {response.WhichOneof('kind')}"
            )
        started = response.started
        self.session_id: str = started.session_id
        self.model: str = started.model
        self.version: int = started.version
        self.num_envs: int = started.num_envs
        self.obs_dim: int = started.obs_dim
        self.action_dim: int = started.action_dim
        self.recurrent: bool = started.recurrent
        self._next_step = int(started.step_index)

    @property
    def resumes(self) -> int:
        """How often the episode was reopened from a snapshot (``resume=True``)."""
        return self._resume.resumes if self._resume is not None else 0

    @property
    def closed(self) -> bool:
        """True once the stream has ended (closed, cancelled or failed)."""
        return self._closed

    def step(self, obs: Any, reset: Any = None, *, action_mask: Any = None, epsilon: float | None = None) -> StepResult:
        """Send one observation per environment, get one action per environment.

        Args:
            obs: ``[num_envs, obs_dim]`` floats (``[obs_dim]`` when num_envs is 1).
            reset: per environment, True when this observation starts a new episode (its LSTM state is
                zeroed first): ``num_envs`` bools, one bool for all, or None (no resets).
            action_mask: ``[num_envs, action_dim]`` bools, True where an action is allowed.
            epsilon: overrides the episode's epsilon for this step only.

        Returns:
            `StepResult`: ``actions [num_envs]``, ``q_values [num_envs, action_dim]``, ``step_index``.

        Raises:
            InvalidArgumentError: bad input; found here, the stream stays usable; found by the server,
            the stream ends. DeadlineExceededError: no answer within ``step_timeout`` (the stream ends).
            FailedPreconditionError: the episode is closed.
        """
        request = episode_step_request(
            obs, num_envs=self.num_envs, reset=reset, action_mask=action_mask, epsilon=epsilon
        )
        with self._lock:
            if self._closed:
                raise FailedPreconditionError(f"episode {self.session_id} is closed ({self._end_reason})")
            try:
                response = self._exchange(request)
            except HamletError as exc:
                if self._resume is None or not self._resume.can_resume(exc, self._next_step):
                    raise
                response = self._resume_with(request, exc)
        self._next_step = int(response.step.step_index) + 1
        if self._resume is not None and response.step.HasField("snapshot"):
            self._resume.keep(response.step.snapshot)
        return step_result_from_proto(response.step)

    def _exchange(self, request: service_pb2.StreamEpisodeRequest) -> service_pb2.StreamEpisodeResponse:
        self._requests.put(request)
        response = self._receive("step")
        if response.WhichOneof("kind") == "ended":
            raise self._ended_by_server(response.ended)
        if response.WhichOneof("kind") != "step":
            self._finish(cancel=True, reason="the server broke the protocol")
            raise InternalError(f"expected an EpisodeStepResult, got {response.WhichOneof('kind')}")
        return response

    def _ended_by_server(self, ended: service_pb2.EpisodeEnded) -> HamletError:
        """The server ended the stream in-band: close our side, keep a drain's snapshot, the typed error."""
        self._finish(cancel=False, reason=f"the server ended the stream: {ended.message}")
        if self._resume is not None and ended.HasField("snapshot"):
            self._resume.keep(ended.snapshot)
        return ended_error(ended)

    def _resume_with(
        self, request: service_pb2.StreamEpisodeRequest, error: HamletError
    ) -> service_pb2.StreamEpisodeResponse:
        """Reopen from the kept snapshot and send ``request`` again; the last error if no attempt works."""
        assert self._resume is not None
        for wait in self._resume.waits():
            time.sleep(wait)
            self._finish(cancel=True, reason="resuming")
            try:
                self._open(self._resume.start_request())
                response = self._exchange(request)
            except HamletError as exc:
                if not is_resumable(exc):
                    raise
                error = exc
                continue
            self._resume.resumed(self._next_step, self.session_id, error)
            return response
        raise error

    def _receive(self, what: str) -> service_pb2.StreamEpisodeResponse:
        self._deadline = time.monotonic() + self._step_timeout
        try:
            return next(self._call)  # type: ignore[no-any-return, unused-ignore]  # Any without types-grpcio
        except StopIteration:
            self._finish(cancel=False, reason="the server ended the stream")
            raise self._ended_error(what) from None
        except grpc.RpcError as exc:
            self._finish(cancel=False, reason=f"the stream failed: {exc.code().name}")
            if self._timed_out:
                raise DeadlineExceededError(
                    f"episode {what} got no answer within step_timeout={self._step_timeout} s; stream cancelled"
                ) from exc
            raise from_rpc_error(exc) from exc
        finally:
            self._deadline = None

    def _ended_error(self, what: str) -> HamletError:
        code = self._call.code()
        if code is not None and code != grpc.StatusCode.OK:
            message = self._call.details() or f"episode stream ended with {code.name}"
            return error_for_code(code, message, reason_from_metadata(self._call))
        return InternalError(f"the server ended the episode stream before answering the {what}")

    def _check_deadline(self, now: float) -> None:
        """Called by the watchdog thread: cancel the call if the current step is overdue."""
        deadline = self._deadline
        if deadline is not None and now > deadline and not self._closed:
            self._timed_out = True
            self._call.cancel()

    def _finish(self, *, cancel: bool, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._end_reason = reason
        self._requests.put(None)
        if cancel:
            self._call.cancel()
        self._watchdog.discard(self)

    def cancel(self) -> None:
        """End the stream at once (RPC cancelled); the server frees the episode's state. Idempotent."""
        self._finish(cancel=True, reason="cancelled")

    def close(self, timeout: float | None = None) -> None:
        """End the stream cleanly: half-close and wait (up to ``timeout``, default step_timeout) for the
        server's OK; cancel it if the server does not finish in time. Idempotent."""
        if self._closed:
            self._watchdog.discard(self)
            return
        with self._lock:
            self._closed = True
            self._end_reason = "closed"
            self._requests.put(None)
            self._deadline = time.monotonic() + (self._step_timeout if timeout is None else timeout)
            try:
                for extra in self._call:
                    _after_close(self.session_id, extra)
            except grpc.RpcError as exc:
                logger.debug("episode %s ended with %s while closing", self.session_id, exc.code())
            finally:
                self._deadline = None
                self._watchdog.discard(self)

    def __enter__(self) -> Episode:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.cancel()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Episode({self.session_id!r}, model={self.model!r}@{self.version}, num_envs={self.num_envs}, {state})"


def _after_close(session_id: str, response: service_pb2.StreamEpisodeResponse) -> None:
    """Log a response that came after the client half-closed: the server's EpisodeEnded (it drained or timed
    the stream out meanwhile) is expected; anything else is not."""
    kind = response.WhichOneof("kind")
    if kind == "ended":
        logger.debug("episode %s was ended by the server while closing: %s", session_id, response.ended.message)
    else:
        logger.warning("episode %s: unexpected %s response after close", session_id, kind)


class _StepWatchdog:
    """One thread per client, alive while episodes are open: cancels a stream whose current step is
    past its deadline (a blocking ``next()`` on a gRPC stream cannot time out by itself). A step pays only
    two attribute writes for this."""

    def __init__(self, interval: float = 0.05) -> None:
        self._interval = interval
        self._episodes: set[Episode] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, episode: Episode) -> None:
        with self._lock:
            self._episodes.add(episode)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hamlet-step-watchdog", daemon=True)
                self._thread.start()

    def discard(self, episode: Episode) -> None:
        with self._lock:
            self._episodes.discard(episode)

    def episodes(self) -> list[Episode]:
        with self._lock:
            return list(self._episodes)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._episodes:
                    self._thread = None
                    return
                episodes = list(self._episodes)
            now = time.monotonic()
            for episode in episodes:
                episode._check_deadline(now)
            time.sleep(self._interval)
