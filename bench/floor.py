"""The bare-gRPC floor: a hamlet.v1 server that does no model work, and a helper to start servers.

The floor decodes each observation tensor (``np.frombuffer``, as a real server must) and answers with
cached zero Q-values and action 0, so its latency and throughput are what Python gRPC itself costs on
this contract. Benchmarks start it as a subprocess (``python bench/floor.py`` prints ``READY host:port``)
beside our server and print both.

``python bench/floor.py --compute MODEL`` is the floor plus the network, in situ: each request's
observations go through the model's forward (the backend our server would pick on the CPU, one thread)
inline in the handler, a stream keeping its LSTM state in a local variable, and the real Q-values and greedy
actions are returned. No batching, state table, validation, masks or metrics: what is left between it and our
server is our server's own work, with the network's cost after each idle gap counted on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2

ACTION_DIM = 6


class FloorServicer(pb_grpc.InferenceServiceServicer):
    """hamlet.v1 with no model: decode the observations, answer cached zeros."""

    def __init__(self) -> None:
        self._answers: dict[int, tuple[tensor_pb2.Tensor, list[int]]] = {}

    def _answer(self, obs: tensor_pb2.Tensor, state: Any) -> tuple[tensor_pb2.Tensor, list[int], Any]:
        """Q-values and actions for ``obs``, and the stream's next ``state`` (None at a stream's start)."""
        batch = _array(obs).shape[0]
        if batch not in self._answers:
            self._answers[batch] = (_tensor(np.zeros((batch, ACTION_DIM), np.float32)), [0] * batch)
        return (*self._answers[batch], state)

    def predict(self, request: pb.PredictRequest) -> pb.PredictResponse:
        q, actions, _ = self._answer(request.observations, None)
        return pb.PredictResponse(model="floor", version=0, actions=actions, q_values=q)

    def started(self, request: pb.StreamEpisodeRequest) -> pb.StreamEpisodeResponse:
        started = pb.EpisodeStarted(session_id="floor", model="floor", num_envs=request.start.num_envs)
        started.action_dim = ACTION_DIM
        return pb.StreamEpisodeResponse(started=started)

    def step(self, request: pb.StreamEpisodeRequest, index: int, state: Any) -> tuple[pb.StreamEpisodeResponse, Any]:
        q, actions, state = self._answer(request.step.observations, state)
        result = pb.EpisodeStepResult(step_index=index, actions=actions, q_values=q, model="floor")
        return pb.StreamEpisodeResponse(step=result), state

    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        return self.predict(request)

    async def StreamEpisode(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.StreamEpisodeResponse]:
        yield self.started(await request_iterator.__anext__())
        index, state = 0, None
        async for request in request_iterator:
            response, state = self.step(request, index, state)
            yield response
            index += 1


class SyncFloor(pb_grpc.InferenceServiceServicer):
    """The same floor (or floor + forward) on grpcio's thread-pool server instead of grpc.aio: what the other
    Python gRPC server would cost us (``--sync``)."""

    def __init__(self, floor: FloorServicer) -> None:
        self._floor = floor

    def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        return self._floor.predict(request)

    def StreamEpisode(self, request_iterator: Any, context: Any) -> Iterator[pb.StreamEpisodeResponse]:
        yield self._floor.started(next(request_iterator))
        state = None
        for index, request in enumerate(request_iterator):
            response, state = self._floor.step(request, index, state)
            yield response


class ComputeFloorServicer(FloorServicer):
    """The floor plus one inline forward of a real model per request (see the module docstring); a stream's
    state is its LSTM state."""

    def __init__(self, model_path: str) -> None:
        super().__init__()
        from hamlet_server.array_ops import ops_for
        from hamlet_server.backends import load_backend, resolve_backend

        backend = resolve_backend("auto", "cpu")
        if backend == "torch":  # only this backend needs torch; the onnx one runs on numpy arrays
            import torch

            torch.set_num_threads(1)
        self._model = load_backend(Path(model_path), "cpu", backend, threads=1)
        self._ops = ops_for(self._model)  # the backend's own arrays, as the server's batcher uses them

    def predict(self, request: pb.PredictRequest) -> pb.PredictResponse:
        """Hidden state in and out, as our Predict (a recurrent model's (h, c) ``[1, B, H]``; absent = zeros)."""
        state = None
        if request.HasField("hidden"):
            state = tuple(self._ops.from_host(_array(part).copy()) for part in (request.hidden.h, request.hidden.c))
        q, actions, state = self._answer(request.observations, state)
        response = pb.PredictResponse(model="floor", version=0, actions=actions, q_values=q)
        if state is not None:
            response.hidden.h.CopyFrom(_tensor(self._ops.to_host(state[0])))
            response.hidden.c.CopyFrom(_tensor(self._ops.to_host(state[1])))
        return response

    def _answer(self, obs: tensor_pb2.Tensor, state: Any) -> tuple[tensor_pb2.Tensor, list[int], Any]:
        array = _array(obs)
        if state is None and self._model.is_recurrent:
            shape = (1, array.shape[0], self._model.hidden_dim or 0)
            state = (self._ops.zeros(shape), self._ops.zeros(shape))
        q, state = self._model.forward(self._ops.from_host(array.copy()), state)
        q_np = self._ops.to_host(q)
        return _tensor(q_np), q_np.argmax(axis=1).tolist(), state


def _tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(shape=array.shape, dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=array.tobytes())


def _array(tensor: tensor_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


async def serve_floor(compute: str | None = None) -> None:
    """Serve the floor (with ``compute``: plus that model's forward) on a free loopback port; print
    ``READY 127.0.0.1:PORT``; run until killed."""
    server = grpc.aio.server()
    servicer = FloorServicer() if compute is None else ComputeFloorServicer(compute)
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"READY 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def serve_sync_floor(compute: str | None = None, threads: int = 128) -> None:
    """`serve_floor` on grpcio's thread-pool server (one thread per open stream: ``threads`` bounds them)."""
    server = grpc.server(ThreadPoolExecutor(threads))
    pb_grpc.add_InferenceServiceServicer_to_server(
        SyncFloor(FloorServicer() if compute is None else ComputeFloorServicer(compute)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


def spawn_ready(cmd: list[str], cwd: Path | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start a server process that prints ``READY host:port`` (the floor, ``hamlet-server serve``);
    return the process and its ``host:port``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("READY "):
            return proc, line.split()[1]
    raise RuntimeError(f"{' '.join(cmd)} exited without printing READY (code {proc.wait()})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The bare-gRPC floor on a free loopback port; prints READY host:port.")
    parser.add_argument("--compute", metavar="MODEL", help="also run this model's forward inline per request")
    parser.add_argument("--sync", action="store_true", help="grpcio's thread-pool server instead of grpc.aio")
    cli = parser.parse_args()
    if cli.sync:
        serve_sync_floor(cli.compute)
    else:
        asyncio.run(serve_floor(cli.compute))
