"""Drains reach user code as typed reasons, or not at all: real servers in threads, the SDK's clients.

A drain refuses new work (UNAVAILABLE, SERVER_DRAINING) and goes NOT_SERVING before it stops the gRPC server,
so a call queued in gRPC when the drain begins is answered, never killed with a bare CANCELLED; the SDK's
channel (service config) retries a refused Predict or episode open on another replica, so with a healthy
second replica nothing reaches the caller. The queued calls are made deterministic by blocking the draining
server's event loop while the calls arrive, then draining before the loop gets to them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_fakes import LostStatusCall
from grpc_health.v1 import health_pb2, health_pb2_grpc
from live_server import ThreadedServer

from hamlet_client import AsyncHamletClient, CancelledError, HamletClient, HamletError, RetryPolicy, UnavailableError
from hamlet_server import batcher
from hamlet_server.config import ServerConfig

MLP, LSTM = "mlp", "lstm"  # the models of the conftest's `model_dir`
OBS = np.zeros(91, np.float32)


@pytest.fixture
def replicas(model_dir: Path, tmp_path: Path) -> Iterator[Callable[[], ThreadedServer]]:
    started: list[ThreadedServer] = []
    settings: dict[str, Any] = {"models": model_dir, "port": 0, "metrics_port": 0, "poll_interval": 0,
                                "backend": "torch", "grace": 5.0}  # fmt: skip
    if "snapshot_key_file" in {f.name for f in dataclasses.fields(ServerConfig)}:  # servers that sign snapshots
        key_file = tmp_path / "snapshot-keys"  # one deployment: every replica signs and verifies with it
        key_file.write_text(secrets.token_hex(32) + "\n")
        settings["snapshot_key_file"] = str(key_file)

    def start() -> ThreadedServer:
        started.append(ThreadedServer(ServerConfig(**settings)))
        return started[-1]

    yield start
    for replica in started:
        if not replica.server._stopped.is_set():
            replica.stop()


def _block_then_drain(replica: ThreadedServer, block: float) -> futures.Future[None]:
    """Block the replica's event loop for ``block`` seconds (calls arriving meanwhile queue in gRPC), then
    drain it before the loop has taken any of them."""

    async def run() -> None:
        time.sleep(block)  # on purpose: the loop takes no call while it sleeps
        await replica.server.drain()

    return asyncio.run_coroutine_threadsafe(run(), replica.loop)


def _call_all(client: HamletClient, calls: int) -> list[Any]:
    """``calls`` concurrent predicts; each result is the `Prediction` or the exception raised."""

    def one(_: int) -> Any:
        try:
            return client.predict(OBS, model=MLP)
        except HamletError as exc:
            return exc

    with futures.ThreadPoolExecutor(max_workers=calls) as pool:
        return list(pool.map(one, range(calls)))


def test_calls_queued_when_the_drain_begins_are_refused_typed_not_cancelled(
    replicas: Callable[[], ThreadedServer],
) -> None:
    replica = replicas()
    with HamletClient(replica.target, retry=RetryPolicy(max_attempts=1), timeout=30.0) as client:
        client.predict(OBS, model=MLP)  # connected
        drained = _block_then_drain(replica, block=0.5)
        time.sleep(0.1)  # the loop is blocked now
        results = _call_all(client, 8)
        drained.result(timeout=30)
    cancelled = [r for r in results if isinstance(r, CancelledError)]
    assert not cancelled, f"{len(cancelled)} of 8 queued calls were killed with a bare CANCELLED"
    refused = [r for r in results if isinstance(r, HamletError)]
    assert all(isinstance(r, UnavailableError) for r in refused), [repr(r) for r in refused]


def test_a_predict_in_flight_when_the_drain_begins_completes(
    replicas: Callable[[], ThreadedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = replicas()
    entered = threading.Event()
    submit = batcher.StepBatcher.submit

    async def slow_submit(self: batcher.StepBatcher, item: batcher.WorkItem) -> batcher.BatchResult:
        entered.set()
        await asyncio.sleep(0.5)  # the drain begins while this call is in its handler
        return await submit(self, item)

    monkeypatch.setattr(batcher.StepBatcher, "submit", slow_submit)
    client = HamletClient(replica.target, retry=RetryPolicy(max_attempts=1), timeout=30.0)
    with client, futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(client.predict, OBS, model=MLP)
        assert entered.wait(timeout=30)
        asyncio.run_coroutine_threadsafe(replica.server.drain(), replica.loop).result(timeout=30)
        assert pending.result(timeout=30).actions.shape == (1,)


def test_with_two_replicas_a_drain_reaches_no_caller(replicas: Callable[[], ThreadedServer]) -> None:
    a, b = replicas(), replicas()
    with HamletClient([a.target, b.target], timeout=30.0) as client:
        for _ in range(4):
            client.predict(OBS, model=MLP)  # both subchannels connected
        drained = _block_then_drain(a, block=0.5)
        results: list[Any] = []
        began = time.monotonic()
        while not drained.done() or time.monotonic() - began < 1.0:  # calls before, during and after the drain
            results += _call_all(client, 4)
            assert time.monotonic() - began < 60, "the drain did not finish"
    errors = [repr(r) for r in results if isinstance(r, HamletError)]
    assert not errors, f"{len(errors)} of {len(results)} calls failed: {errors[:5]}"
    assert len(results) >= 40


def test_an_episode_open_refused_by_a_draining_replica_goes_to_the_other(
    replicas: Callable[[], ThreadedServer],
) -> None:
    a, b = replicas(), replicas()
    a.server.servicer.draining = True  # refuses every open (health still SERVING: the channel keeps picking it)
    with HamletClient([a.target, b.target], timeout=30.0) as client:
        for _ in range(4):
            client.predict(OBS, model=MLP)  # both subchannels connected (a refuses these too: retried on b)
        for _ in range(6):
            with client.episode(LSTM, num_envs=2) as episode:
                assert episode.step(np.zeros((2, 54), np.float32)).step_index == 0
    assert a.sessions() == 0 and b.sessions() == 0


async def test_a_resume_whose_first_reopen_loses_its_status_still_continues(
    replicas: Callable[[], ThreadedServer],
) -> None:
    """The race behind the InternalError of ``test_episodes_survive_a_replica[drain]``, forced: the episode's
    replica drains (its snapshot comes in-band), and the first reopen meets a refusal whose status grpcio
    lost (the reopen landed on the draining replica while its start was being written). Before, that raw
    `AioRpcError` escaped the resume and reached the simulator; now the open is sent again and the episode
    continues on the other replica."""
    a, b = replicas(), replicas()
    rng = np.random.default_rng(0)
    async with AsyncHamletClient([a.target, b.target], timeout=30.0) as client:
        for _ in range(4):
            await client.predict(OBS, model=MLP)  # both subchannels connected
        async with client.episode(LSTM, num_envs=2, resume=True, snapshot_every=0) as episode:
            for _ in range(3):
                await episode.step(rng.random((2, 54), dtype=np.float32))
            holder = a if a.sessions() else b
            real, opens = client._stub.StreamEpisode, []

            def stream_episode(**kwargs: Any) -> Any:
                opens.append(kwargs)
                return LostStatusCall() if len(opens) == 1 else real(**kwargs)

            client._stub.StreamEpisode = stream_episode
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(holder.server.drain(), holder.loop))
            step = await episode.step(rng.random((2, 54), dtype=np.float32))
        assert step.step_index == 3 and episode.resumes == 1
        assert len(opens) == 2


def test_health_watches_end_with_not_serving_when_the_drain_begins(replicas: Callable[[], ThreadedServer]) -> None:
    """A watcher (a balancing client's health check) hears NOT_SERVING and its Watch ends OK; grpcio's stock
    servicer never ended one, so the drain waited out its grace and then cancelled the watch."""
    replica = replicas()
    with grpc.insecure_channel(replica.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="hamlet.v1.Liveness"))
        first = next(watch)
        drained = asyncio.run_coroutine_threadsafe(replica.server.drain(grace=2.0), replica.loop)
        rest = list(watch)
        drained.result(timeout=30)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert [first.status, *(r.status for r in rest)] == [serving, not_serving]
    assert watch.code() == grpc.StatusCode.OK


def test_a_balancing_client_stops_sending_to_a_replica_that_says_not_serving(
    replicas: Callable[[], ThreadedServer],
) -> None:
    """The SDK's channel health-checks each replica: once one reports NOT_SERVING (the first step of its
    drain), new calls go to the others only; plain round_robin would keep sending every other call there."""
    a, b = replicas(), replicas()
    with HamletClient([a.target, b.target], timeout=30.0) as client:
        for _ in range(4):
            client.predict(OBS, model=MLP)
        asyncio.run_coroutine_threadsafe(a.server.health.enter_graceful_shutdown(), a.loop).result(timeout=30)
        for _ in range(100):  # until the client has heard it (a round trip); then whole rounds skip a
            before = _predicts(a)
            for _ in range(20):
                client.predict(OBS, model=MLP)
            if _predicts(a) == before:
                break
        else:
            raise AssertionError("the client kept sending calls to the replica that reported NOT_SERVING")


def _predicts(replica: ThreadedServer) -> float:
    """Predict calls the replica answered OK (its hamlet_requests_total)."""
    value = replica.server.metrics.registry.get_sample_value(
        "hamlet_requests_total", {"method": "Predict", "code": "OK"}
    )
    return value or 0.0
