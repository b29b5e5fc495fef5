"""Fakes of grpcio objects for tests that need a behaviour a real server cannot be made to show on demand."""

from __future__ import annotations

from typing import Any

import grpc


class LostStatusCall:
    """What grpcio's asyncio client gives for an open refused while its start was being written (a replica
    refusing at once, as before issue 21): the write fails and the status is a local INTERNAL."""

    def __init__(self) -> None:
        self.error = grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Internal error from Core"
        )

    async def write(self, request: Any) -> None:
        raise self.error

    async def read(self) -> Any:
        raise self.error

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INTERNAL

    async def details(self) -> str:
        return "Internal error from Core"

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    def cancel(self) -> bool:
        return False
