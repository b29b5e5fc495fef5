"""The /metrics HTTP endpoint: one thread, a bounded number of connections, every read and write timed out.

prometheus_client's `start_http_server` runs a `ThreadingHTTPServer`: one thread per connection and no read
timeout, so 300 half-sent requests held 300 threads for as long as their senders liked. `MetricsEndpoint`
serves the same text from an asyncio server on one daemon thread of its own (a forward blocking the gRPC
event loop does not block a scrape):

    endpoint = MetricsEndpoint(registry)
    port = endpoint.start("127.0.0.1", 9464)     # OSError if the address cannot be bound
    ...                                          # GET /metrics (or /) -> the text exposition format
    endpoint.stop()

- A request must arrive whole within `read_timeout` seconds, and its answer be taken within as long; the
  connection is closed otherwise. One request per connection (``Connection: close``).
- At most `max_connections` are open. A connection past that closes the oldest one still sending its request
  (a slow or stalled sender), so a flood of half-sent requests cannot keep a scraper out; when every open
  connection is being answered, the new one is closed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_READ_TIMEOUT", "MetricsEndpoint"]

log = logging.getLogger(__name__)

DEFAULT_READ_TIMEOUT = 5.0
"""Seconds a connection has to send its whole request (and, separately, to take the answer)."""
DEFAULT_MAX_CONNECTIONS = 64
"""Connections open at once; past it the oldest still sending its request is closed."""
_MAX_HEAD = 8192  # bytes of request line + headers


class MetricsEndpoint:
    """`registry` over HTTP on a thread of its own; see the module docstring for the limits."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if read_timeout <= 0 or max_connections < 1:
            raise ValueError(
                f"read_timeout must be > 0 and max_connections >= 1, got {read_timeout}, {max_connections}"
            )
        self.registry = registry
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.address: tuple[str, int] | None = None
        self.closed_slow = 0  # connections closed for sending their request too slowly, or to make room
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._reading: dict[int, asyncio.StreamWriter] = {}  # connections still sending their request, oldest first
        self._open: set[int] = set()  # every connection being served
        self._ids = itertools.count()

    def start(self, host: str, port: int) -> int:
        """Bind and serve; returns the bound port. Raises OSError when the address cannot be bound."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="hamlet-metrics", daemon=True)
        thread.start()
        bind = asyncio.start_server(self._serve, host, port, reuse_address=True, limit=_MAX_HEAD)
        try:
            self._server = asyncio.run_coroutine_threadsafe(bind, loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        self._loop, self._thread = loop, thread
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        return self.address[1]

    def stop(self) -> None:
        """Close the listening socket and every connection, and end the thread; idempotent."""
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None or server is None:
            return
        self._loop = self._thread = self._server = None
        self.address = None

        async def close() -> None:
            server.close()
            for writer in list(self._reading.values()):
                writer.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=2.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=2.0)
        if not thread.is_alive():
            loop.close()

    # ---- one connection --------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit():
            writer.close()
            return
        key = next(self._ids)
        self._open.add(key)
        self._reading[key] = writer
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
            self._reading.pop(key, None)
            await asyncio.wait_for(self._answer(head, writer), self.read_timeout)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            if key in self._reading:
                self.closed_slow += 1
        finally:
            self._reading.pop(key, None)
            self._open.discard(key)
            writer.close()

    def _admit(self) -> bool:
        """Room for one more connection: closes the oldest one still sending its request when full."""
        if len(self._open) < self.max_connections:
            return True
        if not self._reading:
            return False
        oldest = next(iter(self._reading))
        self._reading.pop(oldest).close()  # its reader sees EOF and its handler ends
        self._open.discard(oldest)  # free now, so that a flood cannot race past the limit meanwhile
        self.closed_slow += 1
        return True

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            status, body, kind = b"405 Method Not Allowed", b"use GET /metrics\n", b"text/plain; charset=utf-8"
        elif path not in (b"/metrics", b"/"):
            status, body, kind = b"404 Not Found", b"the metrics are at /metrics\n", b"text/plain; charset=utf-8"
        else:
            status, body, kind = b"200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + (b"" if method == b"HEAD" else body)
        )  # fmt: skip
        await writer.drain()
