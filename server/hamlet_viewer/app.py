"""The Starlette app: the page and its assets, and one WebSocket per open page driving a `ViewerSession`.

Page -> server messages (JSON, ``type``): ``play``, ``pause`` (no frame follows its ``status`` answer),
``step`` (exactly one step and one frame; pauses first),
``speed`` {value: steps per second}, ``new_episode``, ``configure`` {model, version, level, num_envs,
epsilon, follow_latest, layout, seed: any subset}. Server -> page: see `hamlet_viewer.frames`.

Each page gets its own session (its own envs and episode stream, closed when the page goes). Blocking
work (gRPC calls, torch, numpy steps) runs in a worker thread, one call at a time per page.

Whether the model's source answers is the page's to show (its badge): every step says so, a failed step
asks the brain (`Brain.problem`), and while paused the player asks every `PROBE_SECONDS`; a change goes to
the page as a ``status``.
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

__all__ = ["DEFAULT_SPEED", "MAX_SPEED", "PROBE_SECONDS", "STATIC_DIR", "PagePlayer", "create_app", "same_origin"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_SPEED = 120.0
DEFAULT_SPEED = 30.0
"""Steps per second a page starts at: an L1 or L2 episode (~250 steps) ends in about 8 s."""
PROBE_SECONDS = 2.0
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

    def __init__(
        self, websocket: WebSocket, session: ViewerSession, speed: float, probe_seconds: float = PROBE_SECONDS
    ) -> None:
        self.websocket = websocket
        self.session = session
        self.playing = False
        self.speed = speed
        self.server_problem: str | None = None  # why the model's source does not answer (None: it does)
        self._probe_seconds = probe_seconds
        self._lock = asyncio.Lock()  # one session call at a time
        self._wake = asyncio.Event()

    async def run(self) -> None:
        await self._call_and_send(self.session.start)
        await self._send(self.status_message())
        tasks = [asyncio.create_task(self._tick_forever()), asyncio.create_task(self._probe_forever())]
        try:
            while True:
                raw = await self.websocket.receive_text()
                await self._handle(raw)
                for task in tasks:
                    if task.done():  # surface a crash of the ticker or the probe
                        task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(self.session.close)

    async def _call_and_send(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` in a worker thread and send what it returns, holding the lock across both so that
        messages leave in the order the session made them (a session message before its first frame)."""
        async with self._lock:
            await self._send(await asyncio.to_thread(fn, *args))

    async def _send(self, message: dict[str, Any] | list[dict[str, Any]]) -> None:
        for item in message if isinstance(message, list) else [message]:
            await self.websocket.send_text(json.dumps(item, allow_nan=False))

    def status_message(self) -> dict[str, Any]:
        """The ``status`` message: playing, speed, and whether the model's source answers."""
        return {
            "type": "status",
            "playing": self.playing,
            "speed": self.speed,
            "server_up": self.server_problem is None,
            "server_problem": self.server_problem or "",
        }

    def _server_changed(self, problem: str | None) -> bool:
        """Record whether the model's source answers; True when that changed (the page needs a status)."""
        changed = (problem is None) != (self.server_problem is None)
        self.server_problem = problem
        return changed

    async def _probe_forever(self) -> None:
        """While paused, ask the brain every ``probe_seconds`` whether its server answers (playing, every step
        says so); send a status when that changes."""
        while True:
            await asyncio.sleep(self._probe_seconds)
            if self.playing:
                continue
            async with self._lock:
                problem = await asyncio.to_thread(self.session.brain.problem)
                if self._server_changed(problem):
                    await self._send(self.status_message())

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
                    self._server_changed(await asyncio.to_thread(self.session.brain.problem))
                    await self._send([{"type": "error", "message": message}, self.status_message()])
                    continue
                if self._server_changed(None):  # a step went through: the server is back
                    await self._send(self.status_message())
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
            self._server_changed(None)  # the step went through (a failure raised)
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
        await self._send(self.status_message())


def same_origin(websocket: WebSocket) -> bool:
    """Browsers send Origin on WebSocket upgrades; refuse pages of other sites (cross-site WebSocket
    hijacking of a viewer on localhost). Non-browser clients send none and are allowed."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == websocket.headers.get("host")


def create_app(
    brain: Brain, settings: SessionSettings, *, speed: float = DEFAULT_SPEED, probe_seconds: float = PROBE_SECONDS
) -> Starlette:
    """The viewer app over ``brain``; every page starts with ``settings`` at ``speed`` steps per second, and,
    while paused, asks ``brain`` every ``probe_seconds`` whether its server answers."""
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
        player = PagePlayer(websocket, ViewerSession(brain, settings), speed, probe_seconds)
        try:
            await player.run()
        except WebSocketDisconnect:
            pass
        except Exception as exc:  # the session could not start (server down, bad flag): tell the page
            logger.warning("page session ended: %s", exc)
            player.server_problem = await asyncio.to_thread(brain.problem)
            try:
                message = {"type": "error", "message": f"{type(exc).__name__}: {exc}"}
                await websocket.send_text(json.dumps(player.status_message()))
                await websocket.send_text(json.dumps(message))
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
