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
import socket
import time
from typing import Any

import grpc

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_server.budget import InflightBudgetError
from hamlet_server.config import ServerConfig, add_arguments, config_from_args
from hamlet_server.server import HamletServer
from hamlet_server.servicer import Held, InferenceServicer, lenient

__all__ = ["TAG_ERROR", "TAG_PREDICT", "TAG_STREAM", "FramedLaneProtocol", "LaneAbort"]

HEAD = 4  # little-endian length of what follows: the tag byte and the message
TAG_STREAM, TAG_PREDICT, TAG_ERROR = b"S", b"P", b"E"
MAX_FRAME = 1 << 24
# as add_to_server registers them: a message that does not parse reaches the servicer, which answers
# INVALID_ARGUMENT
_PARSE_STEP = lenient(pb.StreamEpisodeRequest.FromString, "StreamEpisodeRequest")
_PARSE_PREDICT = lenient(pb.PredictRequest.FromString, "PredictRequest")


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
        self._lane.send(self._tag, response.SerializeToString())

    async def abort_with_status(self, status: grpc.Status) -> None:
        self._lane.send(TAG_ERROR, bytes([status.code.value[0]]) + status.details.encode())
        raise LaneAbort(status.details)


class FramedLaneProtocol(asyncio.Protocol):
    """One connection: frames in, the servicer's answers out."""

    def __init__(self, servicer: InferenceServicer) -> None:
        self._servicer = servicer
        self._buffer = bytearray()
        self._transport: Any = None
        self._stream: _Context | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.peer = "tcp:?"

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            host, port = sock.getpeername()[:2]
            self.peer = f"tcp:{host}:{port}"

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.requests.put_nowait(grpc.aio.EOF)

    def send(self, tag: bytes, body: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write((len(body) + 1).to_bytes(HEAD, "little") + tag + body)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= HEAD:
            length = int.from_bytes(self._buffer[:HEAD], "little")
            if not 1 <= length <= MAX_FRAME:
                self._transport.close()
                return
            if len(self._buffer) < HEAD + length:
                return
            tag, body = bytes(self._buffer[HEAD : HEAD + 1]), bytes(self._buffer[HEAD + 1 : HEAD + length])
            del self._buffer[: HEAD + length]
            self._servicer.last_arrival = time.monotonic()
            if tag == TAG_STREAM:
                self._on_stream_message(_PARSE_STEP(body))
            elif tag == TAG_PREDICT:
                self._spawn(self._predict(body))
            else:
                self._transport.close()
                return

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_stream_message(self, request: Any) -> None:
        if self._stream is None:
            self._stream = _Context(self, TAG_STREAM)
            self._spawn(self._run_stream(self._stream))
        self._stream.requests.put_nowait(request)

    async def _run_stream(self, context: _Context) -> None:
        with contextlib.suppress(LaneAbort):
            await self._servicer.StreamEpisode(None, context)  # type: ignore[arg-type]  # the part it uses
        self._transport.close()

    async def _predict(self, body: bytes) -> None:
        try:  # as gRPC's deserializer does (servicer._budgeted): the handler gives the bytes back
            self._servicer.budget.acquire(len(body))
            held = Held(_PARSE_PREDICT(body), len(body))
        except InflightBudgetError as exc:
            held = Held(None, 0, str(exc))
        context = _Context(self, TAG_PREDICT)
        try:
            response = await self._servicer.Predict(held, context)  # type: ignore[arg-type]
        except LaneAbort:
            return
        await context.write(response)


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
