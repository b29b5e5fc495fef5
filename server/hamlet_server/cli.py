"""`hamlet-server serve --models DIR ...`: run the gRPC server until SIGTERM/SIGINT, then drain.

Every flag can also come from the environment as HAMLET_<FLAG> (e.g. HAMLET_MODELS, HAMLET_PORT).
A setting it cannot start with (a taken port, a missing token file, a public --host without a token or TLS,
an unknown device, ...) is one line on stderr, ``hamlet-server: <what to change>``, and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from hamlet_server.config import ServerConfig, add_arguments, config_from_args, is_loopback
from hamlet_server.healthcheck import add_health_arguments, run_health
from hamlet_server.logs import configure_logging
from hamlet_server.startup import StartupError, check_startup, grpc_address
from townlet.inference.version import add_version_flag

__all__ = ["main"]

log = logging.getLogger("hamlet_server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hamlet-server", description="Serve Hamlet DQN agents over gRPC.")
    add_version_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve a model repository",
        description="Serve every model of a model repository over gRPC (hamlet.v1.InferenceService), with "
        "health, reflection and Prometheus metrics. Flags fall back to HAMLET_* environment variables.",
    )
    add_arguments(serve)
    health = commands.add_parser(
        "health",
        help="ask a running server whether it is SERVING (exit 0) or not (exit 1)",
        description="Check a running server through grpc.health.v1 (no token needed): prints the status and "
        "exits 0 when SERVING, 1 otherwise. Reads HAMLET_PORT, HAMLET_HOST and HAMLET_TLS_CERT like serve, "
        "so the container's HEALTHCHECK follows the port the server was given.",
    )
    add_health_arguments(health)
    return parser


async def _serve(config: ServerConfig) -> None:
    from hamlet_server.server import HamletServer

    try:
        server = HamletServer(config)
        await server.start()
    except (ValueError, OSError) as exc:  # a setting that passed check_startup but still cannot work
        raise StartupError(str(exc)) from None
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
    print(f"READY {grpc_address(config.host, server.port)}", flush=True)  # after the handlers: a SIGTERM drains
    await server.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "health":
        return run_health(args)
    try:
        config = config_from_args(args)
        check_startup(config)
    except ValueError as exc:  # StartupError included
        return _refuse(exc)
    configure_logging(config.log_level, config.log_format, show_pid=config.reuse_port)
    if config.allow_insecure and not is_loopback(config.host) and not (config.token_file or config.tls_cert):
        log.warning("--allow-insecure: serving plaintext without a token on %s; anyone who reaches it can call it",
                    config.host)  # fmt: skip
    try:
        if config.workers > 1:
            from hamlet_server.workers import supervise

            return supervise(config)
        asyncio.run(_serve(config))
    except StartupError as exc:
        return _refuse(exc)
    return 0


def _refuse(exc: ValueError) -> int:
    """One line on stderr, exit status 2: the setting to change is in the message."""
    message = " ".join(str(exc).split())
    print(f"hamlet-server: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
