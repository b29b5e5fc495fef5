"""Watching running episodes: a tap on the answered steps that never slows the watched streams.

    hub = WatchHub()
    watcher = hub.subscribe(session_id)          # "" follows every stream
    frame = await watcher.next()                 # the servicer's WatchEpisodes loop
    hub.publish(session_id, build_frame)         # the step path: a no-op while nobody watches
    hub.unsubscribe(watcher)

Each watcher has a small bounded queue. `publish` never waits: when a watcher's queue is full the oldest frame
is dropped (the watcher sees the newest steps) and counted in its ``frames_dropped``. A frame is built only
when someone watches that stream, and once for all of its watchers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_QUEUE", "WatchHub", "Watcher"]

DEFAULT_QUEUE = 32
"""Frames a watcher may fall behind before the oldest are dropped."""

_CLOSED = object()


class Watcher:
    """One WatchEpisodes call: the stream it follows ("" for all), its frames and how many it missed."""

    def __init__(self, session_id: str, size: int) -> None:
        self.session_id = session_id
        self.frames_dropped = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=size)

    def offer(self, frame: Any) -> None:
        """Queue ``frame``; when full, drop the oldest first (never wait)."""
        if self._queue.full():
            self._queue.get_nowait()
            self.frames_dropped += 1
        self._queue.put_nowait(frame)

    def close(self) -> None:
        """Wake `next` with the end of the watch (the stream ended, the server drains)."""
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)

    async def next(self) -> Any | None:
        """The next frame; None when the watch is over."""
        frame = await self._queue.get()
        return None if frame is _CLOSED else frame


class WatchHub:
    """The watchers of one server, by the stream they follow."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE) -> None:
        self._queue_size = queue_size
        self._watchers: dict[str, list[Watcher]] = {}

    @property
    def active(self) -> bool:
        """True while anyone watches anything (the step path checks this first)."""
        return bool(self._watchers)

    def subscribe(self, session_id: str) -> Watcher:
        watcher = Watcher(session_id, self._queue_size)
        self._watchers.setdefault(session_id, []).append(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        watchers = self._watchers.get(watcher.session_id, [])
        if watcher in watchers:
            watchers.remove(watcher)
        if not watchers:
            self._watchers.pop(watcher.session_id, None)

    def publish(self, session_id: str, build: Callable[[], Any]) -> None:
        """Offer a frame of stream ``session_id`` to its watchers and to those of every stream; ``build`` runs
        at most once, and only if someone watches."""
        targets = [*self._watchers.get(session_id, ()), *self._watchers.get("", ())]
        if not targets:
            return
        frame = build()
        for watcher in targets:
            watcher.offer(frame)

    def end(self, session_id: str) -> None:
        """The stream ended: close the watches that follow it alone."""
        for watcher in list(self._watchers.get(session_id, ())):
            watcher.close()

    def close_all(self) -> None:
        for watchers in list(self._watchers.values()):
            for watcher in watchers:
                watcher.close()
