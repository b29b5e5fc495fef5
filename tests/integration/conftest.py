"""A real hamlet_server on a free loopback port and a model repository in a temp dir (fixtures).

Tests talk to the server only through the generated hamlet.v1 stubs over a real channel; the helpers they
share live in `server_helpers`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from live_server import ThreadedServer
from server_helpers import LSTM, MLP, write_model

from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_server.config import ServerConfig
from hamlet_server.server import HamletServer
from townlet.inference import HamletModel

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``fuzz`` (thousands of cases) run only when a ``-m`` expression names fuzz."""
    if "fuzz" in (config.getoption("markexpr") or ""):
        return
    fuzz = [item for item in items if item.get_closest_marker("fuzz")]
    if fuzz:
        config.hook.pytest_deselected(items=fuzz)
        items[:] = [item for item in items if not item.get_closest_marker("fuzz")]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """Two models, version 0: `mlp` (seed 0) and `lstm` (seed 1)."""
    root = tmp_path / "models"
    write_model(root, MLP, MLP, 0, seed=0)
    write_model(root, LSTM, LSTM, 0, seed=1)
    return root


@pytest.fixture
async def server_factory(model_dir: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await server_factory(**settings)` starts a server (drained at teardown)."""
    servers: list[HamletServer] = []

    async def start(**overrides: Any) -> HamletServer:
        settings: dict[str, Any] = {
            "models": model_dir, "port": 0, "metrics_port": 0, "poll_interval": 0.1, "grace": 1.0,
            "device": "cpu",  # exact equality with the local CPU model; the gpu test asks for cuda
            "backend": "torch",  # likewise (the default, auto, is onnx on the CPU: tested on its own)
        }  # fmt: skip
        settings.update(overrides)
        server = HamletServer(ServerConfig(**settings))
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.drain(grace=0.5)


@pytest.fixture
async def server(server_factory: Callable[..., Any]) -> HamletServer:
    return await server_factory()  # type: ignore[no-any-return]


@pytest.fixture
async def stub(server: HamletServer) -> AsyncIterator[pb_grpc.InferenceServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.InferenceServiceStub(channel)


@pytest.fixture
def local_models(model_dir: Path) -> dict[str, HamletModel]:
    """The same checkpoints, loaded locally: the reference the server must match."""
    return {kind: HamletModel.load(model_dir / kind / "model_ep00000.pt") for kind in (MLP, LSTM)}


@pytest.fixture
def threaded_server_factory(model_dir: Path) -> Iterator[Callable[..., ThreadedServer]]:
    servers: list[ThreadedServer] = []

    def start(**overrides: Any) -> ThreadedServer:
        """A ThreadedServer (its own loop in a thread, for the blocking client) on ``model_dir`` unless
        ``models=`` says otherwise; stopped at teardown."""
        settings: dict[str, Any] = {"models": model_dir, "port": 0, "metrics_port": 0, "poll_interval": 0.1,
                                    "backend": "torch"}  # fmt: skip
        settings.update(overrides)
        servers.append(ThreadedServer(ServerConfig(**settings)))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
