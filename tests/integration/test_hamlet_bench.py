"""`hamlet-bench` against a real server: the command line end to end (JSON, floor, /metrics), and the load
generator in-process for open loop, the Predict mix and the counting of errors by status code."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from ports import free_port
from server_helpers import LSTM, MLP, OBS_DIM

from hamlet_client.loadtest import LoadSpec, run_load
from hamlet_client.loadtest.local_run import run_local
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2
from hamlet_server.server import HamletServer


@pytest.mark.slow  # runs hamlet-bench and the floor as processes, ~2 s of load each
async def test_hamlet_bench_json_against_a_server_and_the_floor(server_factory: Callable[..., Any]) -> None:
    server = await server_factory(metrics_port=free_port())  # the fixtures' default 0 turns /metrics off
    metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
    argv = [
        "-m", "hamlet_client.loadtest", "--target", f"127.0.0.1:{server.port}", "--model", LSTM,
        "--streams", "2", "--envs", "2", "--warmup", "0.5", "--duration", "2", "--episode-steps", "50",
        "--metrics", metrics, "--floor", "--quiet", "--json",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert doc["config"]["streams"] == 2 and doc["config"]["envs"] == 2 and doc["config"]["obs_dim"] == OBS_DIM[LSTM]
    for side in ("server", "floor"):
        figures = doc[side]
        assert figures["errors"] == {} and figures["error_count"] == 0, figures["errors"]
        assert figures["steps"] > 0 and figures["steps_per_s"] > 0
        assert figures["env_steps_per_s"] == pytest.approx(2 * figures["steps_per_s"])
        latency = figures["step_latency"]
        assert 0 < latency["p50_us"] <= latency["p90_us"] <= latency["p99_us"]
    assert doc["server"]["mean_server_batch"] >= 1.0  # from hamlet_batch_size_sum / _count
    assert doc["floor"]["mean_server_batch"] is None  # the floor has no /metrics
    assert set(doc["ratios"]) >= {"steps/s", "env-steps/s", "step p50", "step p90", "step p99"}
    table = err.decode()  # with --json to stdout, the table goes to stderr
    assert "env-steps/s" in table and "ratio" in table


async def test_open_loop_with_a_predict_mix(server: HamletServer) -> None:
    spec = LoadSpec(
        streams=2, envs=3, obs_dim=OBS_DIM[MLP], duration=1.0, warmup=0.2, model=MLP, rate=200.0,
        predict_fraction=0.5, episode_steps=5,
    )  # fmt: skip
    seen: list[Any] = []
    figures = await run_load(spec, [f"127.0.0.1:{server.port}"], progress=seen.append, progress_interval=0.25)
    assert figures.errors == {}
    assert figures.steps > 0 and figures.predicts > 0
    assert figures.steps + figures.predicts <= 200 + 2 * spec.streams  # paced at 200 calls/s for 1 s, never faster
    assert figures.predict_latency.count == figures.predicts
    assert seen and any(p.measuring for p in seen)


async def test_errors_are_counted_by_status_code(server: HamletServer) -> None:
    """A model the server does not have: each stream is refused NOT_FOUND, counted, and reopened."""
    spec = LoadSpec(streams=2, envs=1, obs_dim=54, duration=0.6, warmup=0.1, model="no-such-model")
    figures = await run_load(spec, [f"127.0.0.1:{server.port}"])
    assert set(figures.errors) == {"NOT_FOUND"} and figures.errors["NOT_FOUND"] >= 2
    assert figures.steps == 0


async def test_streams_are_spread_over_several_targets(server_factory: Callable[..., Any]) -> None:
    servers = [await server_factory(), await server_factory()]
    spec = LoadSpec(streams=4, envs=1, obs_dim=OBS_DIM[MLP], duration=0.5, warmup=0.1, model=MLP)
    figures = await run_load(spec, [f"127.0.0.1:{s.port}" for s in servers])
    assert figures.errors == {} and figures.steps > 0
    for s in servers:  # round-robin: each server ran forwards for two of the streams
        assert (s.metrics.registry.get_sample_value("hamlet_batch_size_count", {"model": MLP}) or 0) > 0


async def test_channels_are_separate_connections() -> None:
    """`--channels 3` opens three TCP connections (grpc would share one between channels with equal options),
    so that servers sharing a port (`--workers`) can each get some."""
    peers: set[str] = set()

    class PeerRecorder(pb_grpc.InferenceServiceServicer):
        async def StreamEpisode(self, requests: Any, context: Any) -> AsyncIterator[pb.StreamEpisodeResponse]:
            peers.add(context.peer())
            start = (await requests.__anext__()).start
            yield pb.StreamEpisodeResponse(started=pb.EpisodeStarted(num_envs=start.num_envs, action_dim=6))
            q = tensor_pb2.Tensor(shape=[1, 6], dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=bytes(24))
            async for index, _ in aenumerate(requests):
                yield pb.StreamEpisodeResponse(step=pb.EpisodeStepResult(step_index=index, actions=[0], q_values=q))

    server = grpc.aio.server()
    pb_grpc.add_InferenceServiceServicer_to_server(PeerRecorder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        spec = LoadSpec(streams=6, envs=1, obs_dim=4, duration=0.3, warmup=0.1, model="m", channels=3)
        figures = await run_load(spec, [f"127.0.0.1:{port}"])
    finally:
        await server.stop(0)
    assert figures.errors == {} and figures.steps > 0
    assert len(peers) == 3, peers  # one client port per channel


async def aenumerate(items: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    index = 0
    async for item in items:
        yield index, item
        index += 1


async def test_the_local_run_steps_the_same_load_in_this_process(server: HamletServer) -> None:
    spec = LoadSpec(
        streams=2, envs=3, obs_dim=OBS_DIM[LSTM], duration=0.6, warmup=0.1, model=LSTM, predict_fraction=0.25,
        episode_steps=5,
    )  # fmt: skip
    seen: list[Any] = []
    figures = await asyncio.to_thread(
        run_local, spec, f"127.0.0.1:{server.port}", progress=seen.append, progress_interval=0.2
    )
    assert figures.label == "local" and figures.errors == {}
    assert figures.steps > 0 and figures.predicts > 0
    assert figures.step_latency.count == figures.steps and figures.step_latency.p50_us > 0
    assert figures.env_steps_per_s == pytest.approx(3 * (figures.steps + figures.predicts) / 0.6)
    assert seen and any(p.measuring for p in seen)
    with pytest.raises(ValueError, match="lock-step only"):
        run_local(LoadSpec(streams=1, envs=1, obs_dim=54, duration=1.0, rate=10.0), f"127.0.0.1:{server.port}")
