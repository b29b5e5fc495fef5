"""`hamlet-server health`, the image's HEALTHCHECK: SERVING -> exit 0; a port with no server, or a draining
server -> exit 1; it follows HAMLET_PORT rather than a hard-coded 50051."""

from __future__ import annotations

import asyncio

import pytest
from live_server import ThreadedServer
from ports import free_port

from hamlet_server.cli import main
from hamlet_server.config import ServerConfig
from hamlet_server.healthcheck import check_health


@pytest.fixture
def live(model_dir):
    server = ThreadedServer(ServerConfig(models=model_dir, port=0, metrics_port=0, poll_interval=0, backend="torch"))
    yield server
    server.stop()


def test_health_follows_hamlet_port_and_exits_0_when_serving(live, monkeypatch, capsys):
    monkeypatch.setenv("HAMLET_PORT", str(live.server.port))
    monkeypatch.setenv("HAMLET_HOST", "0.0.0.0")  # the image's bind: asked on the loopback
    assert main(["health"]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    assert check_health("127.0.0.1", live.server.port, "hamlet.v1.InferenceService/mlp") == "SERVING"
    assert check_health("127.0.0.1", live.server.port, "hamlet.v1.InferenceService/nope") == "NOT_FOUND"


def test_health_exits_1_without_a_server_or_while_draining(live, monkeypatch, capsys):
    assert main(["health", "--port", str(free_port()), "--timeout", "1"]) == 1
    assert capsys.readouterr().out.strip() == "UNAVAILABLE"
    port = live.server.port
    live.loop.call_soon_threadsafe(setattr, live.server.servicer, "draining", True)
    asyncio.run_coroutine_threadsafe(live.server.health.enter_graceful_shutdown(), live.loop).result(10)
    assert main(["health", "--port", str(port)]) == 1
    assert capsys.readouterr().out.strip() == "NOT_SERVING"
