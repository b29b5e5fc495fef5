"""The framed-TCP floor of issue 25: the FastAPI peer's model on a transport with no HTTP and no gRPC.

    python bench/floor_tcp.py --onnx L2.onnx      # prints READY 127.0.0.1:PORT

Same `RawStepModel` as `bench/peer_fastapi.py` (stateless: obs + h + c in, q + h + c out, raw float32), but each
request and answer is one frame on a plain TCP connection: a 4-byte little-endian length, then the bytes. An
asyncio protocol on uvloop when installed (as uvicorn runs), no parsing beyond the length. What it answers in
`bench_peers.py --tcp-floor` is what a step costs when neither HTTP/1.1 (FastAPI) nor HTTP/2 + gRPC (our server)
carries it: the measured answer to "what would remove the transport's share" of a lone simulator's step.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peer_client import FRAME

if TYPE_CHECKING:
    from peer_fastapi import RawStepModel

__all__ = ["MAX_FRAME", "FramedProtocol", "FramedStepProtocol"]

MAX_FRAME = 1 << 24  # 16 MiB: a length above it closes the connection


class FramedProtocol(asyncio.Protocol):
    """One connection of length-prefixed frames (`peer_client.FRAME`): collects each frame, however the bytes
    arrive, and hands it to `frame_received`; `send_frame` writes one back. bench/lane_tcp.py builds on it too."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: Any = None  # asyncio's or uvloop's TCP transport

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= FRAME.size and not self._transport.is_closing():
            (length,) = FRAME.unpack_from(self._buffer)
            if length > MAX_FRAME:
                self._transport.close()
                return
            if len(self._buffer) < FRAME.size + length:
                return
            body = bytes(self._buffer[FRAME.size : FRAME.size + length])
            del self._buffer[: FRAME.size + length]
            self.frame_received(body)

    def frame_received(self, body: bytes) -> None:
        raise NotImplementedError

    def send_frame(self, body: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(FRAME.pack(len(body)) + body)


class FramedStepProtocol(FramedProtocol):
    """The floor: step the model inline on each frame and answer with its frame."""

    def __init__(self, model: RawStepModel) -> None:
        super().__init__()
        self._model = model

    def frame_received(self, body: bytes) -> None:
        self.send_frame(self._model.step(body))


async def _serve(onnx: Path) -> None:
    from peer_fastapi import RawStepModel

    model = RawStepModel(onnx)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FramedStepProtocol(model), "127.0.0.1", 0, backlog=2048)
    print(f"READY 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True, help="a recurrent model's ONNX export")
    args = parser.parse_args()
    try:
        import uvloop  # the event loop uvicorn runs FastAPI on (uvicorn[standard])
    except ImportError:
        asyncio.run(_serve(args.onnx))
    else:
        uvloop.run(_serve(args.onnx))


if __name__ == "__main__":
    main()
