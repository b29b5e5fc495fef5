"""Watching running episodes (--enable-watch): ListSessions names the open streams, WatchEpisodes sends one
frame per answered step with what the simulator sent and what it got back, a slow watcher misses frames
without slowing the stream, and the whole tap is off by default."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from server_helpers import LSTM, MLP, start_msg, step_msg

from hamlet_client import AsyncHamletClient, FailedPreconditionError, ModelNotFoundError
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc


async def test_watching_is_off_by_default(server) -> None:
    async with AsyncHamletClient(f"127.0.0.1:{server.port}", timeout=30.0) as client:
        with pytest.raises(FailedPreconditionError, match="--enable-watch") as caught:
            await client.list_sessions()
        assert caught.value.reason == "WATCH_DISABLED"
        with pytest.raises(FailedPreconditionError):
            async for _ in client.watch():
                pass


async def test_a_watcher_sees_every_step_of_a_stream(server_factory) -> None:
    server = await server_factory(enable_watch=True, watch_fps=0)  # 0: no rate limit, every step is a frame
    rng = np.random.default_rng(0)
    async with AsyncHamletClient(f"127.0.0.1:{server.port}", timeout=30.0) as client:
        async with client.episode(LSTM, num_envs=3) as episode:
            (session,) = await client.list_sessions()
            assert (session.session_id, session.model, session.num_envs) == (episode.session_id, LSTM, 3)
            frames = []

            async def watch() -> None:
                async for frame in client.watch(episode.session_id):
                    frames.append(frame)

            watcher = asyncio.get_running_loop().create_task(watch())
            await asyncio.sleep(0.2)  # subscribed
            sent, answers = [], []
            for t in range(5):
                obs = rng.random((3, 54), dtype=np.float32)
                sent.append(obs)
                answers.append(await episode.step(obs, reset=[t == 2, False, False]))
        await asyncio.wait_for(watcher, 10)  # the watch ends with the stream
    assert [f.step_index for f in frames] == [0, 1, 2, 3, 4]
    for frame, obs, answer in zip(frames, sent, answers, strict=True):
        np.testing.assert_array_equal(frame.observations, obs)
        np.testing.assert_array_equal(frame.q_values, answer.q_values)
        np.testing.assert_array_equal(frame.actions, answer.actions)
        assert frame.frames_dropped == 0 and frame.session_id == episode.session_id
    assert frames[2].reset.tolist() == [True, False, False] and not frames[1].reset.any()


async def test_a_watcher_that_does_not_read_never_slows_the_stream(server_factory) -> None:
    server = await server_factory(enable_watch=True, watch_fps=0)
    target = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(target) as channel, grpc.aio.insecure_channel(target) as viewer:
        stub = pb_grpc.InferenceServiceStub(channel)
        call = stub.StreamEpisode()
        await call.write(start_msg(MLP, 256))
        await call.read()
        # A watcher is another process (its own connection), subscribed to every stream, that never reads.
        idle = pb_grpc.InferenceServiceStub(viewer).WatchEpisodes(pb.WatchEpisodesRequest())
        for _ in range(500):  # subscribed (the call sends no metadata before its first frame)
            if server.servicer.watch.active:
                break
            await asyncio.sleep(0.01)
        obs = np.random.default_rng(1).random((256, 91), dtype=np.float32)
        for t in range(300):  # ~30 MB of frames the watcher never takes
            await call.write(step_msg(obs))
            assert (await call.read()).step.step_index == t
        assert server.servicer.watch.active
        frames = [await idle.read()]
        while frames[-1].step_index < 299:  # what the transport buffered, then the newest frames kept
            frames.append(await idle.read())
        assert frames[-1].frames_dropped > 0 and len(frames) + frames[-1].frames_dropped == 300
        assert len(frames) < 300  # the stream did not wait for the watcher: frames were dropped instead
        idle.cancel()
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_watching_an_unknown_session_is_not_found(server_factory) -> None:
    server = await server_factory(enable_watch=True)
    async with AsyncHamletClient(f"127.0.0.1:{server.port}", timeout=30.0) as client:
        with pytest.raises(ModelNotFoundError) as caught:
            async for _ in client.watch("s999-nope"):
                pass
    assert caught.value.reason == "UNKNOWN_SESSION"


async def test_frames_are_rate_limited_and_the_last_step_always_arrives(server_factory) -> None:
    server = await server_factory(enable_watch=True, watch_fps=5)  # a frame per 200 ms at most
    rng = np.random.default_rng(2)
    async with AsyncHamletClient(f"127.0.0.1:{server.port}", timeout=30.0) as client:
        async with client.episode(MLP, num_envs=2) as episode:
            frames = []

            async def watch() -> None:
                async for frame in client.watch(episode.session_id):
                    frames.append(frame)

            watcher = asyncio.get_running_loop().create_task(watch())
            while not server.servicer.watch.active:
                await asyncio.sleep(0.01)
            began = time.monotonic()
            for _ in range(40):
                await episode.step(rng.random((2, 91), dtype=np.float32))
            took = time.monotonic() - began
        await asyncio.wait_for(watcher, 10)
    indices = [f.step_index for f in frames]
    assert indices[-1] == 39 and indices == sorted(set(indices))  # the newest step is never lost, in order
    assert len(frames) <= 2 + took * 5, f"{len(frames)} frames in {took:.2f} s at --watch-fps 5"
    assert all(f.frames_dropped == 0 for f in frames)  # skipped by the rate limit is not dropped by a slow reader


async def test_watches_past_max_watchers_are_refused_naming_the_flag(server_factory) -> None:
    server = await server_factory(enable_watch=True, max_watchers=2)
    target = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        held = [stub.WatchEpisodes(pb.WatchEpisodesRequest()) for _ in range(2)]
        while len(server.servicer.watch) < 2:
            await asyncio.sleep(0.01)
        refused = stub.WatchEpisodes(pb.WatchEpisodesRequest())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-watchers" in caught.value.details()
        held[0].cancel()
        while len(server.servicer.watch) > 1:
            await asyncio.sleep(0.01)
        again = stub.WatchEpisodes(pb.WatchEpisodesRequest())  # the place came back
        while len(server.servicer.watch) < 2:
            await asyncio.sleep(0.01)
        for call in (held[1], again):
            call.cancel()


async def test_a_watch_with_nothing_to_show_ends_after_the_watch_timeout(server_factory) -> None:
    server = await server_factory(enable_watch=True, watch_timeout=0.5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).WatchEpisodes(pb.WatchEpisodesRequest())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "--watch-timeout" in caught.value.details()
    assert len(server.servicer.watch) == 0


async def test_a_watcher_that_stops_reading_is_ended_after_the_watch_timeout(server_factory) -> None:
    server = await server_factory(enable_watch=True, watch_fps=0, watch_timeout=1.0)
    target = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(target) as channel, grpc.aio.insecure_channel(target) as viewer:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(start_msg(MLP, 256))
        await call.read()
        idle = pb_grpc.InferenceServiceStub(viewer).WatchEpisodes(pb.WatchEpisodesRequest())
        while not server.servicer.watch.active:
            await asyncio.sleep(0.01)
        obs = np.random.default_rng(3).random((256, 91), dtype=np.float32)
        for _ in range(3000):  # ~280 MB of frames offered: flow control stalls the watch's writes
            await call.write(step_msg(obs))
            await call.read()
            if len(server.servicer.watch) == 0:
                break
        assert len(server.servicer.watch) == 0, "a watch whose writes stalled kept its place"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK  # the stream never noticed
        idle.cancel()
