"""The in-flight budget through a real server: a request past `--max-inflight-mb` gets RESOURCE_EXHAUSTED
(INFLIGHT_BUDGET) naming the limit, and the bytes of every call come back when it ends: answered, refused,
failed or cancelled, Predict or stream step."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
from ports import free_port
from server_helpers import LSTM, MLP, enc, obs_batch, read_to_end, start_msg, step_msg

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc

RE = grpc.StatusCode.RESOURCE_EXHAUSTED
MIB = 1024 * 1024


async def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_predict_larger_than_the_budget_is_refused_naming_the_flag(server_factory) -> None:
    server = await server_factory(max_inflight_mb=1, max_predict_batch=65536)
    obs = obs_batch(MLP, 3000, np.random.default_rng(0))  # 3000 x 91 x 4 B = 1.04 MiB
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        try:
            await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(obs)))
            raise AssertionError("a 1.04 MiB request passed a 1 MiB budget")
        except grpc.aio.AioRpcError as error:
            assert error.code() == RE
            assert "--max-inflight-mb" in error.details() and "whole in-flight budget of 1 MiB" in error.details()
        fits = await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(obs[:2000])))
        assert len(fits.actions) == 2000
    assert server.servicer.budget.in_use == 0 and server.servicer.budget.refused == 1


async def test_a_predict_that_fits_alone_is_refused_while_others_hold_the_budget(server_factory) -> None:
    server = await server_factory(max_inflight_mb=1)
    obs = obs_batch(MLP, 1000, np.random.default_rng(1))  # 364,000 B
    budget = server.servicer.budget
    budget.acquire(800_000)  # calls in progress elsewhere
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        try:
            await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(obs)))
            raise AssertionError("the request passed a budget already 800 kB into its 1 MiB")
        except grpc.aio.AioRpcError as error:
            assert error.code() == RE and "already hold 0.8 MiB" in error.details(), error.details()
        budget.release(800_000)
        answered = await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(obs)))
        assert len(answered.actions) == 1000
    assert budget.in_use == 0


async def test_bytes_come_back_after_an_invalid_and_a_cancelled_predict(server_factory) -> None:
    server = await server_factory(max_delay_us=3_000_000)  # the batcher holds the first item 3 s for company
    budget = server.servicer.budget
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        bad = np.full((4, 91), np.nan, dtype=np.float32)
        try:
            await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(bad)))
            raise AssertionError("NaN observations were accepted")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert budget.in_use == 0
        call = stub.Predict(pb.PredictRequest(model=MLP, observations=enc(obs_batch(MLP, 8, np.random.default_rng(2)))))
        await _wait_for(lambda: budget.in_use > 8 * 91 * 4)  # the whole message: its tensor and the rest
        call.cancel()
        await _wait_for(lambda: budget.in_use == 0)


async def test_stream_steps_hold_bytes_only_while_in_flight_and_are_refused_past_the_budget(server_factory) -> None:
    server = await server_factory(max_inflight_mb=1)
    budget = server.servicer.budget
    rng = np.random.default_rng(3)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(start_msg(LSTM, 4))
        assert (await call.read()).WhichOneof("kind") == "started"
        for _ in range(3):
            await call.write(step_msg(obs_batch(LSTM, 4, rng)))
            assert (await call.read()).WhichOneof("kind") == "step"
        assert budget.in_use == 0
        budget.acquire(MIB - 100)  # others hold all but 100 bytes: a 4 x 54 x 4 = 864 B step does not fit
        await call.write(step_msg(obs_batch(LSTM, 4, rng)))
        responses, error = await read_to_end(call)
        budget.release(MIB - 100)
    assert responses[-1].ended.error_reason == "INFLIGHT_BUDGET"
    assert error.code() == RE and "--max-inflight-mb" in error.details()
    assert budget.in_use == 0 and len(server.streams) == 0


async def test_a_tensor_whose_shape_no_message_can_carry_is_bad_input_not_over_budget(server_factory) -> None:
    server = await server_factory(max_inflight_mb=1)
    lying = pb.PredictRequest(model=MLP, observations=enc(obs_batch(MLP, 2, np.random.default_rng(4))))
    lying.observations.shape[:] = [10**9, 91]  # declares 364 GB, carries 728 bytes
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        try:
            await pb_grpc.InferenceServiceStub(channel).Predict(lying)
            raise AssertionError("a tensor whose bytes do not fit its shape was accepted")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs" in error.details(), error.details()
    assert server.servicer.budget.in_use == 0 and server.servicer.budget.refused == 0


async def test_memory_is_given_back_once_after_a_burst_of_big_requests(server_factory) -> None:
    server = await server_factory(trim_after_mb=1, max_predict_batch=65536)
    obs = obs_batch(MLP, 2000, np.random.default_rng(5))  # 728 kB each: two pass the 1 MiB threshold
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        for _ in range(2):
            await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(obs)))
        await _wait_for(lambda: server.servicer.trimmer.trims == 1)


async def test_predicts_cancelled_at_any_moment_leave_nothing_in_the_budget(server_factory) -> None:
    server = await server_factory(max_delay_us=20_000)
    rng = np.random.default_rng(6)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        calls = [
            stub.Predict(pb.PredictRequest(model=MLP, observations=enc(obs_batch(MLP, 64, rng)))) for _ in range(40)
        ]
        for i, call in enumerate(calls):  # cancelled before, while and after the server holds them
            await asyncio.sleep(0.001 * (i % 7))
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    await _wait_for(lambda: server.servicer.budget.in_use == 0)


async def test_metrics_show_the_bytes_in_flight_while_a_predict_waits(server_factory) -> None:
    server = await server_factory(max_delay_us=3_000_000, metrics_port=free_port())
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"

    def gauge(name: str) -> float:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        return float(re.search(rf"^{name} (\S+)$", text, re.M)[1])  # type: ignore[index]

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).Predict(
            pb.PredictRequest(model=MLP, observations=enc(obs_batch(MLP, 8, np.random.default_rng(7))))
        )
        await _wait_for(lambda: server.servicer.budget.in_use > 0)
        held = await asyncio.to_thread(gauge, "hamlet_inflight_bytes")
        assert held == server.servicer.budget.in_use > 8 * 91 * 4
        call.cancel()
    await _wait_for(lambda: server.servicer.budget.in_use == 0)
    assert await asyncio.to_thread(gauge, "hamlet_inflight_bytes") == 0
    assert await asyncio.to_thread(gauge, "hamlet_unstarted_streams") == 0
    assert await asyncio.to_thread(gauge, "hamlet_watchers") == 0
