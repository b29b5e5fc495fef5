"""A client that re-opens streams and never starts them cannot starve one that starts at once: streams
waiting for their start are held to `--max-unstarted`, the oldest ended first (RESOURCE_EXHAUSTED,
UNSTARTED_LIMIT, in-band), so the other `--max-sessions` places stay for clients that start."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
from server_helpers import LSTM, assert_ended, obs_batch, read_to_end, start_msg, step_msg

from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc

RE = grpc.StatusCode.RESOURCE_EXHAUSTED


async def _squat(stub: pb_grpc.InferenceServiceStub, calls: list[Any], stop: asyncio.Event) -> None:
    """Open streams without ever starting them, as fast as the loop allows, and keep every one open."""
    while not stop.is_set():
        call = stub.StreamEpisode()
        await call.wait_for_connection()
        calls.append(call)
        await asyncio.sleep(0.002)


async def _one_episode(stub: pb_grpc.InferenceServiceStub, rng: np.random.Generator) -> bool:
    """Start, one step, close: True if the server served the whole episode."""
    call = stub.StreamEpisode()
    try:
        await call.write(start_msg(LSTM, 2))
        await call.write(step_msg(obs_batch(LSTM, 2, rng)))
        await call.done_writing()
    except Exception:  # refused at open: the write finds the call over
        call.cancel()
        return False
    responses, error = await read_to_end(call)
    return error is None and [r.WhichOneof("kind") for r in responses] == ["started", "step"]


async def test_a_squatter_reopening_unstarted_streams_does_not_starve_a_starter(server_factory) -> None:
    server = await server_factory(max_sessions=12, max_unstarted=4, start_timeout=60.0)
    rng = np.random.default_rng(0)
    stop, squatted = asyncio.Event(), []
    address = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(address) as squat_channel, grpc.aio.insecure_channel(address) as channel:
        squatter = asyncio.create_task(_squat(pb_grpc.InferenceServiceStub(squat_channel), squatted, stop))
        while len(squatted) < 30:  # the squatter has opened far more streams than --max-sessions
            await asyncio.sleep(0.01)
        stub = pb_grpc.InferenceServiceStub(channel)
        served = [await _one_episode(stub, rng) for _ in range(20)]
        stop.set()
        await squatter
        assert served == [True] * 20, f"the starter got {sum(served)} of 20 episodes while the squatter re-opened"
        assert server.streams.unstarted <= 4
        evictions = server.metrics.stream_ends.labels("evicted_capacity")
        for _ in range(500):  # every squatted stream but the (at most 4) still waiting is ended in-band
            if evictions._value.get() >= len(squatted) - 4:
                break
            await asyncio.sleep(0.02)
        evicted = squatted[0]  # the first squatted stream was among the first ended to make room
        responses, error = await read_to_end(evicted)
        for call in squatted:
            call.cancel()
    assert_ended(responses[-1], "evicted_capacity", RE, "UNSTARTED_LIMIT")
    assert error.code() == RE and "--max-unstarted" in error.details()
    assert evictions._value.get() >= len(squatted) - 4
