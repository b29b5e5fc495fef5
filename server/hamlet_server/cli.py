"""`hamlet-server serve --models DIR ...`: run the gRPC server until SIGTERM/SIGINT, then drain.

Every flag can also come from the environment as HAMLET_<FLAG> (e.g. HAMLET_MODELS, HAMLET_PORT).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from hamlet_server.config import ServerConfig, add_arguments, config_from_args

__all__ = ["main"]

log = logging.getLogger("hamlet_server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hamlet-server", description="Serve Hamlet DQN agents over gRPC.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a model repository",
        description="Serve every model of a model repository over gRPC (hamlet.v1.InferenceService), with "
        "health, reflection and Prometheus metrics. Flags fall back to HAMLET_* environment variables.",
    )
    add_arguments(serve)
    return parser


async def _serve(config: ServerConfig) -> None:
    from hamlet_server.server import HamletServer

    server = HamletServer(config)
    await server.start()
    print(f"READY {config.host}:{server.port}", flush=True)
    loop = asyncio.get_running_loop()
    drain_task: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if drain_task:
            log.warning("second %s: exiting without waiting", signal.Signals(signum).name)
            sys.exit(1)
        log.info("%s received", signal.Signals(signum).name)
        drain_task.append(loop.create_task(server.drain()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await server.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"hamlet-server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not config.models.is_dir():
        print(f"hamlet-server: --models {config.models}: not a directory", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config))
    except ValueError as exc:  # e.g. --device cuda without CUDA
        print(f"hamlet-server: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
