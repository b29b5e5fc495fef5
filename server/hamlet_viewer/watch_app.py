"""The watch mode's Starlette app (``hamlet-viewer --watch``): one page per WebSocket following one running
session of a server (``WatchEpisodes``), read-only.

Each page has its own `AsyncHamletClient`. A reader task takes the frames off the watch stream as fast as
they come and keeps only the newest; the page is sent the newest one, at most ``max_fps`` times a second.
A slow page therefore costs frames, never the watched stream (the server drops frames for a slow watcher
on its side, too). Page -> server: ``{"type": "watch", "session_id": ID}`` switches to another session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from hamlet_viewer.app import STATIC_DIR, same_origin
from hamlet_viewer.watch import WatchView, sessions_message

__all__ = ["WatchPlayer", "create_watch_app"]

logger = logging.getLogger(__name__)

_REFRESH_SECONDS = 2.0  # how often the session list is re-read (and a vanished session noticed)
_WAIT_SECONDS = 0.5  # how often it is re-read while there is no session to watch


class _Latest:
    """The newest frame of a watch, and how many came."""

    def __init__(self) -> None:
        self.frame: Any = None
        self.received = 0
        self.wake = asyncio.Event()


class WatchPlayer:
    """Follows sessions for one page until it closes: lists them, watches one, sends its newest frames."""

    def __init__(
        self,
        websocket: WebSocket,
        client: Any,
        *,
        session_id: str | None = None,
        level: str | None = None,
        max_fps: float = 30.0,
    ) -> None:
        self.websocket = websocket
        self.client = client
        self.level = level
        self.wanted = session_id
        self.min_interval = 1.0 / max_fps
        self._switch = asyncio.Event()
        self.page_gone = asyncio.Event()

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen())
        try:
            while not self.page_gone.is_set():
                self._switch.clear()  # a switch asked from here on is seen by _pause or _follow
                sessions = await self.client.list_sessions()
                target = self._pick(sessions)
                await self._send(sessions_message(sessions, target.session_id if target else None))
                if target is None:
                    await self._send_status("waiting", self._waiting_text(sessions))
                    await self._pause(_WAIT_SECONDS)
                    continue
                await self._follow(target)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    def _pick(self, sessions: list[Any]) -> Any:
        for session in sessions:
            if self.wanted is None or session.session_id == self.wanted:
                return session
        return None

    def _waiting_text(self, sessions: list[Any]) -> str:
        if self.wanted and sessions:
            return f"session {self.wanted} is not open on the server; pick one of the {len(sessions)} open"
        if self.wanted:
            return f"waiting for session {self.wanted} (no episode stream is open on the server)"
        return "waiting for an episode stream to open on the server"

    async def _listen(self) -> None:
        """Page messages: ``watch {session_id}``; the page closing ends the player."""
        try:
            while True:
                try:
                    message = json.loads(await self.websocket.receive_text())
                except ValueError:
                    await self._send({"type": "error", "message": "messages are JSON objects"})
                    continue
                if isinstance(message, dict) and message.get("type") == "watch":
                    wanted = message.get("session_id")
                    self.wanted = str(wanted) if wanted else None
                    self._switch.set()
                else:
                    await self._send(
                        {"type": "error", "message": 'the watch page is read-only: it sends only {"type": "watch"}'}
                    )
        except WebSocketDisconnect:
            self.page_gone.set()
            self._switch.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep until ``seconds`` pass or the page asks for another session (or goes)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._switch.wait(), timeout=seconds)
        self._switch.clear()

    async def _follow(self, session: Any) -> None:
        """Watch ``session`` until it ends, vanishes from the list, or the page switches."""
        try:
            meta = await self.client.metadata(session.model, version=session.version)
            metadata: dict[str, Any] = {**meta.extra}
        except Exception as exc:  # a model removed since: read the observations by their width alone
            logger.info("no metadata for %s v%s: %s", session.model, session.version, exc)
            metadata = {}
        view = WatchView(session, metadata, self.level)
        await self._send(view.session_message())
        latest = _Latest()
        reader = asyncio.create_task(self._read(session.session_id, latest))
        shown, last = 0, None
        next_refresh = time.monotonic() + _REFRESH_SECONDS
        try:
            while not self._switch.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(latest.wake.wait(), timeout=max(0.0, next_refresh - time.monotonic()))
                latest.wake.clear()
                if self._switch.is_set():
                    return
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + _REFRESH_SECONDS
                    sessions = await self.client.list_sessions()
                    await self._send(sessions_message(sessions, session.session_id))
                    if all(s.session_id != session.session_id for s in sessions) and latest.frame is last:
                        await self._send_status("ended", f"session {session.session_id} is no longer open")
                        return
                if latest.frame is not None and latest.frame is not last:
                    last, shown = latest.frame, shown + 1
                    await self._send(view.frame_message(last, skipped=latest.received - shown))
                    await asyncio.sleep(self.min_interval)  # frames that come meanwhile replace each other
                    latest.wake.set()  # look again: a newer frame may be waiting
                    continue
                if reader.done():  # the newest frame is shown: say why it stopped
                    error = reader.exception()
                    reason = f": {error}" if error else ""
                    await self._send_status("ended", f"session {session.session_id} ended{reason}")
                    await self._pause(_WAIT_SECONDS)
                    return
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, session_id: str, latest: _Latest) -> None:
        async for frame in self.client.watch(session_id):
            latest.frame = frame
            latest.received += 1
            latest.wake.set()
        latest.wake.set()

    async def _send(self, message: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(message, allow_nan=False))

    async def _send_status(self, state: str, text: str) -> None:
        await self._send({"type": "watch_status", "state": state, "message": text})


def create_watch_app(
    connect: Callable[[], Any],
    *,
    session_id: str | None = None,
    level: str | None = None,
    max_fps: float = 30.0,
) -> Starlette:
    """The watch-mode app. ``connect()`` makes an `AsyncHamletClient` (called on each page's event loop).

    Args:
        session_id: the session each page watches first; None = the first open one.
        level: read observations as this level (default: the model's metadata, else their width).
        max_fps: most frames a second sent to a page (each the newest).
    """
    if not 0.5 <= max_fps <= 120:
        raise ValueError(f"max_fps must be in [0.5, 120] frames per second, got {max_fps}")

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "watch.html", headers={"Cache-Control": "no-cache"})

    async def websocket_endpoint(websocket: WebSocket) -> None:
        if not same_origin(websocket):
            await websocket.close(code=1008, reason="cross-origin page")
            return
        await websocket.accept()
        client = connect()
        player = WatchPlayer(websocket, client, session_id=session_id, level=level, max_fps=max_fps)
        try:
            await player.run()
        except WebSocketDisconnect:
            pass
        except Exception as exc:  # e.g. the server refuses watching (no --enable-watch), or is down
            logger.warning("watch page ended: %s", exc)
            if not player.page_gone.is_set():
                with contextlib.suppress(Exception):  # the page is gone already
                    await websocket.send_text(json.dumps({"type": "error", "message": _describe(exc)}))
                    await websocket.close(code=1011)
        finally:
            await client.close()

    routes = [
        Route("/", index),
        WebSocketRoute("/ws", websocket_endpoint),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(routes=routes)


def _describe(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "WATCH_DISABLED" in text or "enable-watch" in text:
        return text
    if type(exc).__name__ == "FailedPreconditionError":
        return f"{text} (does the server run with --enable-watch?)"
    return text
