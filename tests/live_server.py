"""A real HamletServer on its own event loop in a daemon thread, for tests that use the blocking client; and
`write_snapshot_keys`, the key file that replicas of one test deployment share so that episodes move between them.

(The asyncio tests use the integration conftest's `server` fixture on the test's own loop instead.)
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from pathlib import Path

from hamlet_server.config import ServerConfig
from hamlet_server.server import HamletServer

__all__ = ["ThreadedServer", "write_snapshot_keys"]


def write_snapshot_keys(path: Path, *keys: str) -> Path:
    """Write a `--snapshot-key-file` at ``path`` holding ``keys`` (one per line, the first signs), or one fresh
    random key when none is given; returns ``path``."""
    path.write_text("\n".join(keys or (secrets.token_hex(32),)) + "\n")
    return path


class ThreadedServer:
    """Starts on a free loopback port (``config.port = 0``); ``target`` is ``127.0.0.1:<port>``."""

    def __init__(self, config: ServerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = HamletServer(config)
        self._thread = threading.Thread(target=self.loop.run_forever, name="hamlet-test-server", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=60)
        except BaseException:
            self._stop_loop()
            raise
        self.target = f"127.0.0.1:{self.server.port}"

    def sessions(self) -> int:
        return len(self.server.streams)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.drain(grace=0.5), self.loop).result(timeout=30)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
