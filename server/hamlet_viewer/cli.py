"""``hamlet-viewer``: serve the live viewer page (default http://127.0.0.1:8765) for a Hamlet Serve server
(default localhost:50051) or, with ``--checkpoint``, for a local checkpoint (no server needed); with
``--watch``, a read-only page following a running episode stream of the server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from hamlet_viewer.app import DEFAULT_SPEED, MAX_SPEED, create_app
from hamlet_viewer.brains import Brain, LocalBrain, RemoteBrain
from hamlet_viewer.errors import ViewerError
from hamlet_viewer.session import MAX_ENVS, SessionSettings
from hamlet_viewer.watch_app import create_watch_app
from townlet.inference.version import add_version_flag

__all__ = ["brain_from_args", "build_parser", "main", "watch_app_from_args"]

logger = logging.getLogger("hamlet_viewer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hamlet-viewer",
        description="Watch a Hamlet agent play Townlet live in the browser. Actions come from a served model "
        "through an episode stream (the server keeps the LSTM state), or from a local checkpoint.",
    )
    add_version_flag(parser)
    source = parser.add_argument_group("where actions come from")
    source.add_argument(
        "--target", default="localhost:50051", help="Hamlet Serve server host:port (default %(default)s)"
    )
    source.add_argument("--token-file", default="", help="file holding the server's bearer token (as hamlet-server's)")
    source.add_argument("--tls", action="store_true", help="TLS to the server with the system's root certificates")
    source.add_argument(
        "--checkpoint", default="", help="run this local checkpoint (model_epNNNNN.pt or a folder of them) instead "
        "of a server; its sibling *_epNNNNN.pt files are its versions",
    )  # fmt: skip
    web = parser.add_argument_group("the page")
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    web.add_argument("--port", type=int, default=8765, help="port (default %(default)s; 0 picks a free one)")
    start = parser.add_argument_group("what each page starts with (all changeable on the page)")
    start.add_argument("--model", default=None, help="model name (default: the server's default model)")
    start.add_argument(
        "--model-version", type=int, default=None, help="model version (default: the latest)"
    )  # --version is the program's
    start.add_argument("--level", default=None, help="Townlet level (default: the one the model trained on)")
    start.add_argument(
        "--envs", type=int, default=1, help=f"environments shown side by side, 1..{MAX_ENVS} (default 1)"
    )
    start.add_argument("--epsilon", type=float, default=0.0, help="exploration rate (default 0: greedy)")
    start.add_argument("--seed", type=int, default=0, help="seed of layouts, start cells and exploration (default 0)")
    start.add_argument(
        "--layout", choices=("trained", "random"), default="trained",
        help="trained: the layout the model trained on (from its metadata); random: a new one every episode",
    )  # fmt: skip
    start.add_argument(
        "--speed", type=float, default=DEFAULT_SPEED,
        help=f"steps per second, 0.1..{MAX_SPEED:g} (default {DEFAULT_SPEED:g}: an episode of ~250 steps in ~8 s)",
    )  # fmt: skip
    start.add_argument("--follow-latest", action="store_true", help="switch to newer model versions as they appear")
    watch = parser.add_argument_group(
        "watch mode: follow a running episode stream of the server (read-only; the server needs --enable-watch)"
    )
    watch.add_argument(
        "--watch", action="store_true",
        help="render a session of the server from its observations instead of running episodes here",
    )  # fmt: skip
    watch.add_argument("--session", default=None, help="session id to watch (default: the first open one)")
    watch.add_argument(
        "--max-fps", type=float, default=30.0, help="most frames a second sent to a page, each the newest (default 30)"
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def _token(args: argparse.Namespace) -> str | None:
    if not args.token_file:
        return None
    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as exc:
        raise ViewerError(f"--token-file {args.token_file}: {exc.strerror}") from None
    if not token:
        raise ViewerError(f"--token-file {args.token_file} is empty; put the server's bearer token in it")
    return token


def brain_from_args(args: argparse.Namespace) -> Brain:
    """The `Brain` the flags name: a local checkpoint, else the server (with its token and TLS)."""
    if args.checkpoint:
        import torch

        torch.set_num_threads(1)  # small batches: one thread is several times faster than torch's default
        return LocalBrain(Path(args.checkpoint))
    return RemoteBrain(args.target, token=_token(args), tls=args.tls)


def watch_app_from_args(args: argparse.Namespace) -> Starlette:
    """The ``--watch`` app: each page gets an `AsyncHamletClient` of ``--target`` with the token and TLS."""
    if args.checkpoint:
        raise ViewerError("--watch follows a session of a server; it does not take --checkpoint")
    if not 0.5 <= args.max_fps <= 120:
        raise ViewerError(f"--max-fps must be in [0.5, 120], got {args.max_fps}")
    token = _token(args)

    def connect() -> Any:
        from hamlet_client import AsyncHamletClient

        return AsyncHamletClient(args.target, token=token, tls=args.tls or None)

    return create_watch_app(connect, session_id=args.session, level=args.level, max_fps=args.max_fps)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ViewerError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    sock.listen(64)
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    try:
        if args.watch:
            app = watch_app_from_args(args)
            logger.info("watching the sessions of %s", args.target)
            sock = _bind(args.host, args.port)
        else:
            app, sock = _play_app(args)
    except ViewerError as exc:
        print(f"hamlet-viewer: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    if not ipaddress.ip_address(host).is_loopback:
        logger.warning("listening on %s: anyone who reaches it can watch and drive the viewer (no login)", host)
    shown = f"[{host}]" if ":" in host else host
    print(f"READY http://{shown}:{port}/", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, ws_max_size=1 << 20)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn has shut down already
        asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
    return 0


def _play_app(args: argparse.Namespace) -> tuple[Starlette, socket.socket]:
    """The play mode's app (episodes run here) and its listening socket."""
    if args.session:
        raise ViewerError("--session names the session to watch; add --watch")
    settings = SessionSettings(
        model=args.model, version=args.model_version, level=args.level, num_envs=args.envs, epsilon=args.epsilon,
        seed=args.seed, follow_latest=args.follow_latest, layout=args.layout,
    ).checked()  # fmt: skip
    brain = brain_from_args(args)
    app = create_app(brain, settings, speed=args.speed)
    try:
        names = [entry.name for entry in brain.models()]
        logger.info("%s serves %s", brain.label, ", ".join(names))
    except Exception as exc:  # the page retries; say now what is wrong
        logger.warning("cannot list the models of %s yet (%s); is `make serve` running?", brain.label, exc)
    return app, _bind(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
