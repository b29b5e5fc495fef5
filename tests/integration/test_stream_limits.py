"""Streams that cannot escape the limits, through a real server: pre-start streams count and time out,
non-reading clients are ended, the slot cap answers RESOURCE_EXHAUSTED, the hidden-state table gives its
memory back, every server-side end reaches both clients as its typed error (never InvalidStateError or a
bare INTERNAL), garbage bytes get INVALID_ARGUMENT, and echoed input is truncated."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from live_server import ThreadedServer
from server_helpers import LSTM, MLP, assert_ended, enc, obs_batch, read_to_end, start_msg, step_msg

from hamlet_client import (
    AsyncHamletClient,
    CapacityExceededError,
    HamletClient,
    ServerDrainingError,
    SessionExpiredError,
)
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_server.config import ServerConfig

DE = grpc.StatusCode.DEADLINE_EXCEEDED


async def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_streams_without_a_start_count_and_time_out(server_factory) -> None:
    server = await server_factory(max_sessions=3, start_timeout=0.4)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        silent = [stub.StreamEpisode() for _ in range(3)]
        for call in silent:
            await call.wait_for_connection()
        await _wait_for(lambda: len(server.streams) == 3)
        extra = stub.StreamEpisode()
        await extra.write(start_msg(LSTM, 1))
        _, error = await read_to_end(extra)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "not yet started" in error.details()
        for call in silent:
            responses, error = await read_to_end(call)
            assert_ended(responses[-1], "start_timeout", DE, "START_TIMEOUT")
            assert error.code() == DE and "--start-timeout" in error.details()
    assert len(server.streams) == 0
    assert server.metrics.stream_ends.labels("start_timeout")._value.get() == 3


async def test_a_client_that_stops_reading_is_ended_after_the_ttl(server_factory) -> None:
    server = await server_factory(session_ttl=0.5)
    obs = obs_batch(LSTM, 256, np.random.default_rng(0))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(start_msg(LSTM, 256))
        for _ in range(300):  # ~2 MB of responses it never reads: flow control stops the server's writes
            await call.write(step_msg(obs))
        began = time.monotonic()
        await _wait_for(lambda: len(server.streams) == 0, timeout=15.0)
        freed_after = time.monotonic() - began
        call.cancel()
    assert freed_after < 10.0
    assert server.metrics.stream_ends.labels("idle_timeout")._value.get() == 1


async def test_slot_cap_is_resource_exhausted_naming_limit_and_use(server_factory) -> None:
    server = await server_factory(max_slots=8)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        held = stub.StreamEpisode()
        await held.write(start_msg(LSTM, 6))
        assert (await held.read()).WhichOneof("kind") == "started"
        refused = stub.StreamEpisode()
        await refused.write(start_msg(LSTM, 4))
        responses, error = await read_to_end(refused)
        assert_ended(responses[-1], "evicted_capacity", grpc.StatusCode.RESOURCE_EXHAUSTED, "SLOT_LIMIT")
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "6 of its 8 environment rows (--max-slots)" in error.details()
        await held.done_writing()
        assert await held.code() == grpc.StatusCode.OK


async def test_the_hidden_state_table_gives_memory_back_after_a_burst(server_factory) -> None:
    server = await server_factory()
    rng = np.random.default_rng(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        calls = []
        for _ in range(8):
            call = stub.StreamEpisode()
            await call.write(start_msg(LSTM, 512))
            await call.read()
            await call.write(step_msg(obs_batch(LSTM, 512, rng)))
            await call.read()
            calls.append(call)
        table = server.repository.latest(LSTM).batcher.table
        peak = table.nbytes
        assert table.capacity >= 8 * 512
        for call in calls:
            await call.done_writing()
            await call.code()
        await _wait_for(lambda: len(server.streams) == 0)
    assert table.capacity == 64 and table.nbytes < peak / 50  # 4096+ rows -> 64


def test_blocking_client_gets_session_expired_with_the_servers_message(model_dir) -> None:
    server = ThreadedServer(ServerConfig(models=model_dir, port=0, metrics_port=0, session_ttl=0.3))
    try:
        with HamletClient(server.target, timeout=30.0) as client, client.episode(LSTM, num_envs=2) as episode:
            episode.step(np.zeros((2, 54), np.float32))
            time.sleep(1.5)
            with pytest.raises(SessionExpiredError) as caught:
                episode.step(np.zeros((2, 54), np.float32))
        assert caught.value.end_reason == "idle_timeout" and caught.value.reason == "IDLE_TIMEOUT"
        assert "--session-ttl" in caught.value.message and caught.value.code == DE
    finally:
        server.stop()


async def test_asyncio_client_gets_session_expired_not_invalid_state(server_factory) -> None:
    server = await server_factory(session_ttl=0.3)
    client = AsyncHamletClient(f"127.0.0.1:{server.port}", timeout=30.0)
    async with client, client.episode(LSTM, num_envs=2) as episode:
        await episode.step(np.zeros((2, 54), np.float32))
        await asyncio.sleep(1.5)
        with pytest.raises(SessionExpiredError) as caught:
            await episode.step(np.zeros((2, 54), np.float32))
    assert caught.value.end_reason == "idle_timeout" and "--session-ttl" in caught.value.message


async def test_asyncio_clients_see_server_draining_during_a_drain(server_factory) -> None:
    server = await server_factory()
    errors: list[BaseException] = []
    steps = 0
    stepping: set[int] = set()

    async def simulator(client: AsyncHamletClient, index: int) -> None:
        nonlocal steps
        try:
            async with client.episode(LSTM, num_envs=2) as episode:
                while True:
                    await episode.step(np.zeros((2, 54), np.float32))
                    stepping.add(index)
                    steps += 1
        except BaseException as exc:
            errors.append(exc)

    async with AsyncHamletClient(f"127.0.0.1:{server.port}", timeout=30.0) as client:
        tasks = [asyncio.get_running_loop().create_task(simulator(client, i)) for i in range(24)]
        await _wait_for(lambda: len(stepping) == 24 and steps >= 100)  # every episode is running when it drains
        await server.drain(grace=2.0)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert len(errors) == 24
    kinds = {type(e).__name__ for e in errors}
    assert kinds == {"ServerDrainingError"}, [repr(e) for e in errors]
    assert all(isinstance(e, ServerDrainingError) and "shutting down" in e.message for e in errors)


async def test_garbage_bytes_are_invalid_argument(server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        predict = channel.unary_unary("/hamlet.v1.InferenceService/Predict")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await predict(b"\xff\xff\xff\xff garbage")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid hamlet.v1.PredictRequest" in caught.value.details()
        stream = channel.stream_stream("/hamlet.v1.InferenceService/StreamEpisode")
        call = stream()
        await call.write(b"\x0a\xff\xff\xff\xff\x0f")
        responses, error = await read_to_end(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        ended = pb.StreamEpisodeResponse.FromString(responses[-1])
        assert_ended(ended, "bad_request", grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_MESSAGE")
        ok = await pb_grpc.InferenceServiceStub(channel).Predict(
            pb.PredictRequest(model=MLP, observations=enc(np.zeros((1, 91), np.float32)))
        )
        assert len(ok.actions) == 1  # the server is unharmed
    assert len(server.streams) == 0


async def test_a_huge_echoed_model_name_is_truncated_and_stays_not_found(server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        name = "x" * 100_000
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(pb.PredictRequest(model=name, observations=enc(np.zeros((1, 91), np.float32))))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(caught.value.details()) < 2_000 and "more characters" in caught.value.details()


async def test_a_cancelled_stream_is_counted_cancelled_not_ok(server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(start_msg(LSTM, 1))
        await call.read()
        call.cancel()
    requests = server.metrics.requests

    def counted(code: str) -> Any:
        return requests.labels("StreamEpisode", code)._value.get()

    await _wait_for(lambda: len(server.streams) == 0 and counted("CANCELLED") + counted("OK") >= 1)
    assert counted("CANCELLED") == 1 and counted("OK") == 0


def test_both_clients_expose_the_reason_of_a_unary_error(model_dir) -> None:
    server = ThreadedServer(ServerConfig(models=model_dir, port=0, metrics_port=0, max_sessions=1))
    try:
        with HamletClient(server.target, timeout=30.0) as client:
            with pytest.raises(Exception) as caught:
                client.predict(np.zeros(91, np.float32), model="nope")
            assert caught.value.reason == "UNKNOWN_MODEL"  # type: ignore[attr-defined]
            with client.episode(LSTM, num_envs=1), pytest.raises(CapacityExceededError) as full:
                client.episode(LSTM, num_envs=1)
            assert full.value.reason == "SESSION_LIMIT"
    finally:
        server.stop()


async def test_asyncio_opens_refused_at_the_session_limit_are_always_typed(model_dir) -> None:
    """50 opens refused at --max-sessions: each raises CapacityExceededError (SESSION_LIMIT), as with the
    blocking client; before, about a third were raw grpc.aio.AioRpcError (the refusal met the start's write)."""
    server = ThreadedServer(ServerConfig(models=model_dir, port=0, metrics_port=0, max_sessions=1, backend="torch"))
    try:
        refusals = []
        async with AsyncHamletClient(server.target, timeout=30.0) as client, client.episode(MLP):  # the only session
            for _ in range(50):
                try:
                    await client.episode(MLP).start()
                except Exception as exc:  # every kind is recorded: the point is which ones come
                    refusals.append(exc)
        assert len(refusals) == 50
        untyped = [repr(e) for e in refusals if not isinstance(e, CapacityExceededError)]
        assert not untyped, untyped[:3]
        assert {e.reason for e in refusals} == {"SESSION_LIMIT"}
    finally:
        server.stop()
