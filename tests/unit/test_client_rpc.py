"""HamletClient / AsyncHamletClient mechanics against an in-process fake servicer on the generated stubs:
retries (gRPC's, from the channel's service config: UNAVAILABLE only, idempotent calls and episode opens
only), deadlines, error mapping, the bearer token, episode streams
(start, lock-step order, clean close vs cancel, server errors, step timeouts), thread sharing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_fakes import LostStatusCall

from hamlet_client import (
    AsyncHamletClient,
    CapacityExceededError,
    DeadlineExceededError,
    FailedPreconditionError,
    HamletClient,
    InternalError,
    InvalidArgumentError,
    ModelNotFoundError,
    RetryPolicy,
    UnavailableError,
)
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import model_pb2
from hamlet_client.stub import InferenceStub
from hamlet_client.tensors import decode_tensor, encode_tensor

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)
NAN_MARK = 999.0  # a step whose first observation value is this is refused by the fake server
SLOW_MARK = -777.0  # ... and this one is answered after a long sleep
DROP_MARK = -555.0  # ... and this one ends the stream with UNAVAILABLE (a replica going away mid-episode)


@dataclass
class FakeServicer(pb_grpc.InferenceServiceServicer):
    """Deterministic answers: Q = obs[:, :3] * 2, action = argmax; fails on demand."""

    fail_with: list[grpc.StatusCode] = field(default_factory=list)
    delay: float = 0.0
    calls: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)
    stream_ends: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls += 1
            self.metadata.append(dict(context.invocation_metadata()))
            code = self.fail_with.pop(0) if self.fail_with else None
        if self.delay:
            time.sleep(self.delay)
        if code is not None:
            context.abort(code, f"fake failure {code.name}")

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        self._enter(context)
        if request.model not in ("", "fake"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model!r}; known: ['fake']")
        obs = decode_tensor(request.observations)
        q = (obs[:, :3] * 2).astype(np.float32)
        resp = pb.PredictResponse(
            model="fake", version=request.version or 1, actions=q.argmax(1).tolist(), q_values=encode_tensor(q)
        )
        if request.HasField("hidden"):
            resp.hidden.h.CopyFrom(encode_tensor(decode_tensor(request.hidden.h) + 1))
            resp.hidden.c.CopyFrom(encode_tensor(decode_tensor(request.hidden.c) - 1))
        return resp

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        self._enter(context)
        summary = model_pb2.ModelSummary(
            name="fake",
            versions=[1],
            loaded_versions=[1],
            latest_version=1,
            network_type=model_pb2.NETWORK_TYPE_SIMPLE,
            obs_dim=4,
            action_dim=3,
        )
        return pb.ListModelsResponse(models=[summary], default_model="fake")

    def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.GetModelMetadataResponse:
        self._enter(context)
        if request.model not in ("", "fake"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model!r}")
        return pb.GetModelMetadataResponse(metadata=model_pb2.ModelMetadata(name="fake", version=1, obs_dim=4))

    def StreamEpisode(
        self, request_iterator: Iterator[pb.StreamEpisodeRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamEpisodeResponse]:
        self._enter(context)
        context.add_callback(lambda: self.stream_ends.append("rpc-terminated"))
        first = next(request_iterator)
        if first.WhichOneof("kind") != "start":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "first message must be a start")
        num_envs = first.start.num_envs
        if num_envs > 64:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"num_envs {num_envs} > 64")
        yield pb.StreamEpisodeResponse(
            started=pb.EpisodeStarted(
                session_id="s-1", model="fake", version=1, num_envs=num_envs, obs_dim=4, action_dim=3, recurrent=False
            )
        )
        for index, request in enumerate(request_iterator):
            obs = decode_tensor(request.step.observations)
            if obs[0, 0] == NAN_MARK:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "observations: expected finite values")
            if obs[0, 0] == SLOW_MARK:
                time.sleep(2.0)
            if obs[0, 0] == DROP_MARK:
                context.abort(grpc.StatusCode.UNAVAILABLE, "replica went away")
            q = obs[:, :3] * 2 + np.asarray(request.step.reset, dtype=np.float32).reshape(-1, 1)[: len(obs)].sum()
            yield pb.StreamEpisodeResponse(
                step=pb.EpisodeStepResult(
                    step_index=index, actions=[index] * num_envs, q_values=encode_tensor(q), model="fake", version=1
                )
            )
        # A sync server's request iterator also just stops when the client cancels: only a live RPC here means
        # the client half-closed (a clean end of requests).
        self.stream_ends.append("half-closed" if context.is_active() else "cancelled-while-reading")


@pytest.fixture
def fake() -> Iterator[tuple[FakeServicer, str]]:
    servicer = FakeServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


# ---------------------------------------------------------------- sync unary calls


def test_predict_round_trip(fake: tuple[FakeServicer, str]) -> None:
    _, target = fake
    obs = np.array([[1.0, 5.0, 2.0, 0.0], [3.0, 0.0, 1.0, 0.0]], dtype=np.float32)
    with HamletClient(target) as client:
        result = client.predict(obs)
        np.testing.assert_array_equal(result.q_values, obs[:, :3] * 2)
        np.testing.assert_array_equal(result.actions, [1, 0])
        assert result.model_version == ("fake", 1)
        single = client.predict([0.0, 0.0, 1.0, 0.0], version=4)
        assert single.actions.tolist() == [2]
        assert single.version == 4
        h = np.zeros((1, 1, 2), dtype=np.float32)
        hidden = client.predict([0.0, 0.0, 1.0, 0.0], hidden=(h, h)).hidden
        assert hidden is not None
        np.testing.assert_array_equal(hidden[0], h + 1)


def test_unavailable_is_retried_then_succeeds(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    servicer.fail_with = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    with HamletClient(target, retry=FAST_RETRY) as client:
        assert client.predict([1.0, 2.0, 3.0, 4.0]).actions.tolist() == [2]
    assert servicer.calls == 3


def test_unavailable_gives_up_after_max_attempts(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    servicer.fail_with = [grpc.StatusCode.UNAVAILABLE] * 10
    with HamletClient(target, retry=FAST_RETRY) as client, pytest.raises(UnavailableError, match="fake failure"):
        client.list_models()
    assert servicer.calls == 4


def test_retries_live_in_the_channel_not_in_a_loop_of_the_sdk(fake: tuple[FakeServicer, str]) -> None:
    """A call made on the SDK's channel without the SDK's methods is retried too: gRPC does it, from the
    channel's service config."""
    servicer, target = fake
    servicer.fail_with = [grpc.StatusCode.UNAVAILABLE]
    with HamletClient(target, retry=FAST_RETRY) as client:
        raw = InferenceStub(client._channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert raw.default_model == "fake"
    assert servicer.calls == 2


def test_one_attempt_turns_retries_off(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    servicer.fail_with = [grpc.StatusCode.UNAVAILABLE]
    with HamletClient(target, retry=RetryPolicy(max_attempts=1)) as client, pytest.raises(UnavailableError):
        client.predict([1.0, 2.0, 3.0, 4.0])
    assert servicer.calls == 1


def test_an_episode_open_refused_with_unavailable_is_sent_again(fake: tuple[FakeServicer, str]) -> None:
    """Refused before any response (as a draining replica refuses a new stream): nothing started, so gRPC
    sends the open again (to the next replica when there are several)."""
    servicer, target = fake
    servicer.fail_with = [grpc.StatusCode.UNAVAILABLE]
    with HamletClient(target, retry=FAST_RETRY) as client, client.episode() as episode:
        assert episode.step([0.0, 0.0, 0.0, 0.0]).step_index == 0
    assert servicer.calls == 2


def test_a_started_episode_is_never_sent_again(fake: tuple[FakeServicer, str]) -> None:
    """Once the server has answered the start the stream is committed: a later UNAVAILABLE reaches the caller
    (or `resume=True`), never a silent second stream."""
    servicer, target = fake
    with HamletClient(target, retry=FAST_RETRY) as client, client.episode() as episode:
        episode.step([0.0, 0.0, 0.0, 0.0])
        with pytest.raises(UnavailableError, match="replica went away"):
            episode.step([DROP_MARK, 0.0, 0.0, 0.0])
    assert servicer.calls == 1


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, CapacityExceededError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
    ],
)
def test_other_codes_are_not_retried_and_keep_their_type(
    fake: tuple[FakeServicer, str], code: grpc.StatusCode, cls: type[Exception]
) -> None:
    servicer, target = fake
    servicer.fail_with = [code, code]
    with HamletClient(target, retry=FAST_RETRY) as client, pytest.raises(cls, match=f"fake failure {code.name}"):
        client.predict([1.0, 2.0, 3.0, 4.0])
    assert servicer.calls == 1


def test_unknown_model_is_model_not_found(fake: tuple[FakeServicer, str]) -> None:
    _, target = fake
    with HamletClient(target) as client:
        with pytest.raises(ModelNotFoundError, match="unknown model 'nope'") as info:
            client.metadata("nope")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert client.metadata().name == "fake"
        assert [m.name for m in client.list_models()] == ["fake"]


def test_deadline_is_applied_and_mapped(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    servicer.delay = 0.5
    with HamletClient(target) as client, pytest.raises(DeadlineExceededError) as info:
        client.predict([1.0, 2.0, 3.0, 4.0], timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_unreachable_server_is_unavailable_after_retries() -> None:
    with HamletClient("127.0.0.1:1", retry=FAST_RETRY, timeout=2.0) as client, pytest.raises(UnavailableError):
        client.list_models()


def test_token_travels_as_bearer_metadata(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    with HamletClient(target, token="s3cret") as client:
        client.list_models()
        with client.episode() as episode:
            episode.step([0.0, 0.0, 0.0, 0.0])
    assert [m.get("authorization") for m in servicer.metadata] == ["Bearer s3cret", "Bearer s3cret"]
    with HamletClient(target) as client:
        client.list_models()
    assert "authorization" not in servicer.metadata[-1]


def test_closed_client_refuses_calls(fake: tuple[FakeServicer, str]) -> None:
    _, target = fake
    client = HamletClient(target)
    client.close()
    client.close()
    with pytest.raises(FailedPreconditionError, match="closed"):
        client.list_models()
    with pytest.raises(FailedPreconditionError, match="closed"):
        client.episode()


def test_client_is_shared_between_threads(fake: tuple[FakeServicer, str]) -> None:
    _, target = fake
    rng = np.random.default_rng(0)
    inputs = [rng.random((3, 4), dtype=np.float32) for _ in range(64)]
    with HamletClient(target) as client, futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(client.predict, inputs))
        for obs, result in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(result.q_values, obs[:, :3] * 2)

        def run_episode(seed: int) -> list[int]:
            with client.episode(num_envs=2, seed=seed) as episode:
                return [episode.step(np.full((2, 4), seed, dtype=np.float32)).step_index for _ in range(5)]

        assert list(pool.map(run_episode, range(8))) == [[0, 1, 2, 3, 4]] * 8


# ---------------------------------------------------------------- sync episodes


def test_episode_lock_step_and_clean_close(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    obs = np.arange(12, dtype=np.float32).reshape(3, 4)
    with HamletClient(target) as client:
        with client.episode(num_envs=3, epsilon=0.1, seed=3) as episode:
            assert (episode.session_id, episode.num_envs, episode.obs_dim, episode.action_dim) == ("s-1", 3, 4, 3)
            first = episode.step(obs)
            second = episode.step(obs, reset=[True, False, True])
            third = episode.step(obs, reset=True, action_mask=np.ones((3, 3), dtype=bool), epsilon=0.0)
        assert episode.closed
        assert [first.step_index, second.step_index, third.step_index] == [0, 1, 2]
        np.testing.assert_array_equal(first.q_values, obs[:, :3] * 2)
        np.testing.assert_array_equal(second.q_values, obs[:, :3] * 2 + 2)
        np.testing.assert_array_equal(third.actions, [2, 2, 2])
        with pytest.raises(FailedPreconditionError, match="closed"):
            episode.step(obs)
    _wait_for(lambda: "rpc-terminated" in servicer.stream_ends)
    assert servicer.stream_ends[0] == "half-closed"  # the server saw the end of the requests: a clean close


def test_episode_exit_on_exception_cancels_the_stream(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    with HamletClient(target) as client:
        with pytest.raises(RuntimeError, match="simulator crashed"), client.episode() as episode:
            episode.step([0.0, 0.0, 0.0, 0.0])
            raise RuntimeError("simulator crashed")
        assert episode.closed
    _wait_for(lambda: "rpc-terminated" in servicer.stream_ends)
    # The RPC was cancelled, not half-closed (checked on the client's call: a sync server's request iterator
    # ends the same way for both, so the fake cannot always tell them apart).
    assert episode._call.code() == grpc.StatusCode.CANCELLED


def test_episode_client_side_error_keeps_the_stream_usable(fake: tuple[FakeServicer, str]) -> None:
    _, target = fake
    with HamletClient(target) as client, client.episode(num_envs=2) as episode:
        with pytest.raises(InvalidArgumentError, match=r"\[2, obs_dim\]"):
            episode.step(np.zeros((3, 4)))
        with pytest.raises(InvalidArgumentError, match="NaN"):
            episode.step(np.full((2, 4), np.nan))
        assert episode.step(np.zeros((2, 4))).step_index == 0


def test_episode_server_error_is_typed_and_ends_the_stream(fake: tuple[FakeServicer, str]) -> None:
    _, target = fake
    with HamletClient(target) as client, client.episode() as episode:
        episode.step([0.0, 0.0, 0.0, 0.0])
        with pytest.raises(InvalidArgumentError, match="expected finite values"):
            episode.step([NAN_MARK, 0.0, 0.0, 0.0])
        assert episode.closed
        with pytest.raises(FailedPreconditionError, match="closed"):
            episode.step([0.0, 0.0, 0.0, 0.0])


def test_episode_start_refused_is_typed(fake: tuple[FakeServicer, str]) -> None:
    _, target = fake
    with HamletClient(target) as client:
        with pytest.raises(CapacityExceededError, match="num_envs 65 > 64"):
            client.episode(num_envs=65)
        with pytest.raises(InvalidArgumentError, match="num_envs"):
            client.episode(num_envs=0)


def test_episode_step_timeout_cancels_the_stream(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    with HamletClient(target) as client:
        episode = client.episode(step_timeout=0.2)
        with pytest.raises(DeadlineExceededError, match=r"step_timeout=0\.2"):
            episode.step([SLOW_MARK, 0.0, 0.0, 0.0])
        assert episode.closed
    _wait_for(lambda: "rpc-terminated" in servicer.stream_ends)


def test_closing_the_client_cancels_open_episodes(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    client = HamletClient(target)
    episode = client.episode()
    episode.step([0.0, 0.0, 0.0, 0.0])
    client.close()
    assert episode.closed
    _wait_for(lambda: "rpc-terminated" in servicer.stream_ends)


# ---------------------------------------------------------------- asyncio client


async def test_async_predict_retry_and_errors(fake: tuple[FakeServicer, str]) -> None:
    servicer, target = fake
    servicer.fail_with = [grpc.StatusCode.UNAVAILABLE]
    async with AsyncHamletClient(target, retry=FAST_RETRY, token="t") as client:
        result = await client.predict([[1.0, 5.0, 2.0, 0.0]])
        assert result.actions.tolist() == [1]
        assert servicer.calls == 2
        assert servicer.metadata[-1]["authorization"] == "Bearer t"
        with pytest.raises(ModelNotFoundError):
            await client.predict([1.0, 2.0, 3.0, 4.0], model="nope")
        servicer.fail_with = [grpc.StatusCode.INVALID_ARGUMENT]
        with pytest.raises(InvalidArgumentError, match="fake failure"):
            await client.list_models()
        assert (await client.metadata()).name == "fake"
        servicer.delay = 0.5
        with pytest.raises(DeadlineExceededError):
            await client.list_models(timeout=0.05)


async def test_async_episode_many_concurrent_streams(fake: tuple[FakeServicer, str]) -> None:
    import asyncio

    servicer, target = fake
    async with AsyncHamletClient(target) as client:

        async def simulate(seed: int) -> list[int]:
            obs = np.full((2, 4), seed, dtype=np.float32)
            async with client.episode(num_envs=2, seed=seed) as episode:
                out = []
                for _ in range(5):
                    step = await episode.step(obs)
                    np.testing.assert_array_equal(step.q_values, obs[:, :3] * 2)
                    out.append(step.step_index)
                return out

        assert await asyncio.gather(*(simulate(s) for s in range(8))) == [[0, 1, 2, 3, 4]] * 8
    _wait_for(lambda: servicer.stream_ends.count("half-closed") == 8)


async def test_async_episode_errors_and_cancel(fake: tuple[FakeServicer, str]) -> None:
    _, target = fake
    async with AsyncHamletClient(target) as client:
        unopened = client.episode()
        with pytest.raises(FailedPreconditionError, match="not started"):
            await unopened.step([0.0, 0.0, 0.0, 0.0])
        with pytest.raises(CapacityExceededError):
            async with client.episode(num_envs=65):
                pass
        async with client.episode() as episode:
            with pytest.raises(InvalidArgumentError, match="expected finite values"):
                await episode.step([NAN_MARK, 0.0, 0.0, 0.0])
            with pytest.raises(FailedPreconditionError, match="closed"):
                await episode.step([0.0, 0.0, 0.0, 0.0])
        with pytest.raises(RuntimeError, match="boom"):
            async with client.episode() as episode:
                await episode.step([0.0, 0.0, 0.0, 0.0])
                raise RuntimeError("boom")
        # An exception inside the block cancels the RPC (never a clean half-close). The sync fake server
        # cannot reliably tell a cancel from a half-close, so the client's own call is checked.
        assert episode.closed and episode._call.cancelled()
        slow = await client.episode(step_timeout=0.2).start()
        with pytest.raises(DeadlineExceededError, match="step_timeout"):
            await slow.step([SLOW_MARK, 0.0, 0.0, 0.0])
        assert slow.closed and slow._call.cancelled()


def test_a_call_refused_by_a_draining_server_is_server_draining() -> None:
    """The reason decides the class where it is finer than the code: a Predict or a stream's open refused with
    reason SERVER_DRAINING is a ServerDrainingError (still an UnavailableError, so it is retried elsewhere)."""
    from hamlet_client.errors import ServerDrainingError, UnavailableError, error_for_code

    refused = error_for_code(grpc.StatusCode.UNAVAILABLE, "server is shutting down", reason="SERVER_DRAINING")
    assert type(refused) is ServerDrainingError and isinstance(refused, UnavailableError)
    assert refused.reason == "SERVER_DRAINING" and refused.code == grpc.StatusCode.UNAVAILABLE
    assert type(error_for_code(grpc.StatusCode.UNAVAILABLE, "connection refused")) is UnavailableError


@pytest.mark.parametrize("lost", [1, 2, 3])
async def test_async_open_whose_status_grpc_lost_is_opened_again(fake: tuple[FakeServicer, str], lost: int) -> None:
    """Forces the ordering behind the raw `AioRpcError`s at the session limit (issue 21): the first ``lost``
    opens meet the lost-status write. The episode opens again, at most 3 times in all; what reaches the
    caller is always a `HamletError`."""
    _, target = fake
    async with AsyncHamletClient(target) as client:
        real = client._stub.StreamEpisode
        opens = []

        def stream_episode(**kwargs: Any) -> Any:
            opens.append(kwargs)
            return LostStatusCall() if len(opens) <= lost else real(**kwargs)

        client._stub.StreamEpisode = stream_episode
        if lost < 3:
            async with client.episode() as episode:
                assert (await episode.step([0.0, 0.0, 0.0, 0.0])).step_index == 0
            assert len(opens) == lost + 1
        else:
            with pytest.raises(InternalError, match="Internal error from Core"):
                await client.episode().start()
            assert len(opens) == 3
