"""Hamlet Serve: the gRPC service that hosts Hamlet models (see docs/SERVING.md).

    from hamlet_server import HamletServer, ServerConfig
    server = HamletServer(ServerConfig(models="models", port=0))
    port = await server.start()
    ...
    await server.drain()

Names are imported lazily, so `import hamlet_server` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hamlet_server.config import ServerConfig
    from hamlet_server.server import HamletServer

__all__ = ["HamletServer", "ServerConfig"]

_HOMES = {"HamletServer": "server", "ServerConfig": "config"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'hamlet_server' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hamlet_server.{_HOMES[name]}"), name)
