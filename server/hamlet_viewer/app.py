"""The Starlette app: the page and its assets, and one WebSocket per open page driving a `ViewerSession`.

Page -> server messages (JSON, ``type``): ``play``, ``pause`` (no frame follows its ``status`` answer),
``step`` (exactly one step and one frame; pauses first),
``speed`` {value: steps per second}, ``new_episode``, ``configure`` {model, version, level, num_envs,
epsilon, follow_latest, layout, seed: any subset}. Server -> page: see `hamlet_viewer.frames`.

Each page gets its own session (its own envs and episode stream, closed when the page goes). Blocking
work (gRPC calls, torch, numpy steps) runs in a worker thread, one call at a time per page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from hamlet_viewer.brains import Brain
from hamlet_viewer.errors import ViewerError
from hamlet_viewer.frames import FRAME_SCHEMA
from hamlet_viewer.session import SessionSettings, ViewerSession

__all__ = ["MAX_SPEED", "STATIC_DIR", "PagePlayer", "create_app", "same_origin"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_SPEED = 120.0
_SETTING_TYPES: dict[str, Callable[[Any], Any]] = {
    "model": str,
    "version": lambda v: None if v in (None, "", "latest") else int(v),
    "level": lambda v: None if v in (None, "") else str(v),
    "num_envs": int,
    "epsilon": float,
    "follow_latest": bool,
    "layout": str,
    "seed": lambda v: None if v in (None, "") else int(v),
}


def parse_settings(raw: Any) -> dict[str, Any]:
    """The ``configure`` message's settings, typed; `ViewerError` for an unknown key or a bad value."""
    if not isinstance(raw, dict):
        raise ViewerError(f"configure: expected an object of settings, got {type(raw).__name__}")
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _SETTING_TYPES:
            raise ViewerError(f"configure: unknown setting {key!r}; settable: {sorted(_SETTING_TYPES)}")
        try:
            changes[key] = _SETTING_TYPES[key](value)
        except (TypeError, ValueError):
            raise ViewerError(f"configure: {key}={value!r} is not a valid value") from None
    return changes


class PagePlayer:
    """Plays one page's session: a ticker task that steps while playing, and the page's commands."""

    def __init__(self, websocket: WebSocket, session: ViewerSession, speed: float) -> None:
        self.websocket = websocket
        self.session = session
        self.playing = False
        self.speed = speed
        self._lock = asyncio.Lock()  # one session call at a time
        self._wake = asyncio.Event()

    async def run(self) -> None:
        await self._call_and_send(self.session.start)
        await self._send(self._status())
        ticker = asyncio.create_task(self._tick_forever())
        try:
            while True:
                raw = await self.websocket.receive_text()
                await self._handle(raw)
                if ticker.done():  # surface a crash of the ticker
                    ticker.result()
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            await asyncio.to_thread(self.session.close)

    async def _call_and_send(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` in a worker thread and send what it returns, holding the lock across both so that
        messages leave in the order the session made them (a session message before its first frame)."""
        async with self._lock:
            await self._send(await asyncio.to_thread(fn, *args))

    async def _send(self, message: dict[str, Any] | list[dict[str, Any]]) -> None:
        for item in message if isinstance(message, list) else [message]:
            await self.websocket.send_text(json.dumps(item, allow_nan=False))

    def _status(self) -> dict[str, Any]:
        return {"type": "status", "playing": self.playing, "speed": self.speed}

    async def _tick_forever(self) -> None:
        while True:
            if not self.playing:
                self._wake.clear()
                await self._wake.wait()
                continue
            began = time.monotonic()
            async with self._lock:  # a step and its frame go out together; pause waits for both
                if not self.playing:
                    continue
                try:
                    await self._send(await asyncio.to_thread(self.session.step))
                except Exception as exc:  # e.g. the server went away: pause and say why; Play retries
                    logger.warning("step failed: %s", exc)
                    self.playing = False
                    message = str(exc) if isinstance(exc, ViewerError) else f"{type(exc).__name__}: {exc}"
                    await self._send([{"type": "error", "message": message}, self._status()])
                    continue
            await asyncio.sleep(max(0.0, 1.0 / self.speed - (time.monotonic() - began)))

    async def _handle(self, raw: str) -> None:
        try:
            message = json.loads(raw)
            kind = message.get("type") if isinstance(message, dict) else None
            await self._command(kind, message)
        except (ViewerError, ValueError) as exc:  # bad input from the page, or a setting that does not fit
            await self._send({"type": "error", "message": str(exc)})
        except Exception as exc:  # e.g. the server refused a model switch; the page stays usable
            logger.exception("command failed")
            await self._send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})

    async def _command(self, kind: Any, message: dict[str, Any]) -> None:
        if kind == "play":
            self.playing = True
            self._wake.set()
        elif kind == "pause":
            self.playing = False
            async with self._lock:  # the step in flight (if any) has sent its frame: none follows the status
                pass
        elif kind == "step":
            self.playing = False
            await self._call_and_send(self.session.step)
        elif kind == "speed":
            value = float(message.get("value", 0))
            if not 0.1 <= value <= MAX_SPEED:
                raise ViewerError(f"speed must be in [0.1, {MAX_SPEED:g}] steps per second, got {value}")
            self.speed = value
        elif kind == "new_episode":
            await self._call_and_send(self.session.new_episode)
        elif kind == "configure":
            changes = parse_settings(message.get("settings"))
            await self._call_and_send(self.session.configure, changes)
        else:
            raise ViewerError(
                f"unknown message type {kind!r}; expected play, pause, step, speed, new_episode or configure"
            )
        await self._send(self._status())


def same_origin(websocket: WebSocket) -> bool:
    """Browsers send Origin on WebSocket upgrades; refuse pages of other sites (cross-site WebSocket
    hijacking of a viewer on localhost). Non-browser clients send none and are allowed."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == websocket.headers.get("host")


def create_app(brain: Brain, settings: SessionSettings, *, speed: float = 8.0) -> Starlette:
    """The viewer app over ``brain``; every page starts with ``settings`` at ``speed`` steps per second."""
    if not 0.1 <= speed <= MAX_SPEED:
        raise ViewerError(f"speed must be in [0.1, {MAX_SPEED:g}] steps per second, got {speed}")
    settings = settings.checked()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def schema(request: Request) -> Response:
        return JSONResponse(FRAME_SCHEMA)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        if not same_origin(websocket):
            await websocket.close(code=1008, reason="cross-origin page")
            return
        await websocket.accept()
        player = PagePlayer(websocket, ViewerSession(brain, settings), speed)
        try:
            await player.run()
        except WebSocketDisconnect:
            pass
        except Exception as exc:  # the session could not start (server down, bad flag): tell the page
            logger.warning("page session ended: %s", exc)
            try:
                await websocket.send_text(json.dumps({"type": "error", "message": f"{type(exc).__name__}: {exc}"}))
                await websocket.close(code=1011)
            except Exception:  # the page is gone already
                pass

    routes = [
        Route("/", index),
        Route("/frame-schema.json", schema),
        WebSocketRoute("/ws", websocket_endpoint),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(brain.close)

    return Starlette(routes=routes, lifespan=lifespan)
