"""Issue 25's remedy, measured with our own work in it: Hamlet's servicer with gRPC taken out of the way.

    python bench/lane_tcp.py --models DIR --backend onnx [--uvloop] ...   # + any `hamlet-server serve` flag

Starts the real `HamletServer` (repository, batcher, sessions, in-flight budget, metrics: everything
`hamlet-server serve` runs with these flags) and, beside its gRPC port, a loopback TCP port that carries the same
hamlet.v1 messages in length-prefixed frames and hands them to the same `InferenceServicer` methods through a
small stand-in for grpc.aio's servicer context. Each frame is a 4-byte little-endian length, then one tag byte,
then the message: ``S`` a StreamEpisodeRequest (a connection whose first frame is ``S`` is one stream), ``P`` a
PredictRequest (answered in order). Answers carry the same tag and the response; a call that ends with a status
answers ``E`` followed by the code (one byte) and the message.

This is a measurement, not a product lane: no token, TLS or limits of its own beyond the servicer's. What
`bench_peers.py --tcp-lane` reports from it is what a step of ours costs when the transport is as cheap as the
framed-TCP floor's (bench/floor_tcp.py), i.e. the measured answer to "a framed lane with our work in it".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

import grpc
from floor_tcp import FramedProtocol

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_server.config import ServerConfig, add_arguments, config_from_args
from hamlet_server.server import HamletServer
from hamlet_server.servicer import InferenceServicer, budgeted, lenient

__all__ = ["TAG_ERROR", "TAG_PREDICT", "TAG_STREAM", "FramedLaneProtocol", "LaneAbort"]

TAG_STREAM, TAG_PREDICT, TAG_ERROR = b"S", b"P", b"E"


class LaneAbort(Exception):
    """What `abort_with_status` raises here, as grpc.aio's does (its AbortError): the handler ends."""


class _Context:
    """The part of grpc.aio.ServicerContext the servicer's Predict and StreamEpisode use."""

    def __init__(self, lane: FramedLaneProtocol, tag: bytes) -> None:
        self._lane, self._tag = lane, tag
        self.requests: asyncio.Queue[Any] = asyncio.Queue()

    def peer(self) -> str:
        return self._lane.peer

    async def read(self) -> Any:
        return await self.requests.get()

    async def write(self, response: Any) -> None:
        self._lane.send_frame(self._tag + response.SerializeToString())

    async def abort_with_status(self, status: grpc.Status) -> None:
        self._lane.send_frame(TAG_ERROR + bytes([status.code.value[0]]) + status.details.encode())
        raise LaneAbort(status.details)


class FramedLaneProtocol(FramedProtocol):
    """One connection: tagged frames in, the servicer's answers out. The messages are parsed as add_to_server's
    deserializers parse them (a Predict's bytes are charged to the in-flight budget first; a message that does not
    parse reaches the servicer, which answers INVALID_ARGUMENT)."""

    def __init__(self, servicer: InferenceServicer) -> None:
        super().__init__()
        self._servicer = servicer
        self._parse_step = lenient(pb.StreamEpisodeRequest.FromString, "StreamEpisodeRequest")
        self._parse_predict = budgeted(lenient(pb.PredictRequest.FromString, "PredictRequest"), servicer.budget)
        self._stream: _Context | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.peer = "tcp:?"

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"tcp:{host}:{port}"

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.requests.put_nowait(grpc.aio.EOF)

    def frame_received(self, body: bytes) -> None:
        self._servicer.last_arrival = time.monotonic()
        tag, message = body[:1], body[1:]
        if tag == TAG_STREAM:
            if self._stream is None:  # the connection's first stream message opens its stream
                self._stream = _Context(self, TAG_STREAM)
                self._spawn(self._run_stream(self._stream))
            self._stream.requests.put_nowait(self._parse_step(message))
        elif tag == TAG_PREDICT:
            self._spawn(self._predict(self._parse_predict(message)))
        else:
            self._transport.close()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_stream(self, context: _Context) -> None:
        with contextlib.suppress(LaneAbort):
            await self._servicer.StreamEpisode(None, context)  # type: ignore[arg-type]  # the part it uses
        self._transport.close()

    async def _predict(self, held: Any) -> None:
        context = _Context(self, TAG_PREDICT)
        with contextlib.suppress(LaneAbort):
            await context.write(await self._servicer.Predict(held, context))  # type: ignore[arg-type]


async def _serve(config: ServerConfig) -> None:
    server = HamletServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    lane = await loop.create_server(lambda: FramedLaneProtocol(server.servicer), "127.0.0.1", 0, backlog=2048)
    print(f"READY 127.0.0.1:{lane.sockets[0].getsockname()[1]} grpc 127.0.0.1:{server.port}", flush=True)
    await server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " Takes every `hamlet-server serve` flag.")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (uvicorn's loop) instead of asyncio's")
    add_arguments(parser)
    args = parser.parse_args()
    config = config_from_args(args, environ={})
    if args.uvloop:
        import uvloop

        uvloop.run(_serve(config))
    else:
        asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
