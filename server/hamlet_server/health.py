"""grpc.health.v1 for a server that drains: ``Check``, and ``Watch`` streams that end when the drain begins.

gRPC clients that balance over replicas with health checking (the SDK's channels do, watching
``hamlet.v1.Liveness``) hold one ``Watch`` per replica and stop sending new calls to a replica the moment it
reports NOT_SERVING. grpcio's stock asyncio servicer never ends a ``Watch``, so a graceful stop would wait its
whole grace for them and then cancel every call still open. Here `enter_graceful_shutdown` sets every name
NOT_SERVING, sends that to every watcher, and ends the watches (status OK), so clients leave first and the
stop does not wait for them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["DrainingHealthServicer"]

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DrainingHealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Health statuses by service name ("" = the whole server), watched or checked; see the module doc."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed = asyncio.Condition()
        self._version = 0  # bumped by every change, so a watcher misses none between two waits
        self.shutting_down = False

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown health service name {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """The status of ``request.service`` now and at every change (SERVICE_UNKNOWN for a name not set);
        ends after sending NOT_SERVING once the server drains."""
        seen, sent = -1, None
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._version != seen)  # noqa: B023 (called right here)
                seen, ending = self._version, self.shutting_down
                status = self._status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if ending:
                return

    async def set(self, service: str, status: int) -> None:
        """Set the status of ``service``; ignored once the server drains (everything stays NOT_SERVING)."""
        if not self.shutting_down:
            await self._publish({service: status})

    async def enter_graceful_shutdown(self) -> None:
        """Every name NOT_SERVING for good, and every ``Watch`` ends after saying so. Idempotent."""
        if not self.shutting_down:
            self.shutting_down = True
            await self._publish(dict.fromkeys(self._status, NOT_SERVING))

    async def _publish(self, statuses: dict[str, int]) -> None:
        async with self._changed:
            self._status.update(statuses)
            self._version += 1
            self._changed.notify_all()
