"""`hamlet-server serve --workers N`: N server processes on one port (SO_REUSEPORT), supervised by this one.

    parent (this module)           reserves --port (0: a free one), starts N children, prints READY once
      |                            every child is ready, forwards SIGTERM/SIGINT, restarts a child that dies
      +-- worker 0 ... worker N-1  each a complete `hamlet-server serve --workers 1 --reuse-port`: its own
                                   models, batcher, streams and LSTM state; /metrics on --metrics-port + i

The kernel hands each new TCP connection to one of the listening workers; every call on that connection (so
every stream, with its recurrent state) stays on that worker. Whether this pays is a matter of free cores:
docs/PERFORMANCE.md has the measurement. Children are started in their own process group (a terminal's
Ctrl-C reaches only the parent, which drains them once) and die with the parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

from hamlet_server.config import ServerConfig, to_flags
from hamlet_server.startup import StartupError, grpc_address

__all__ = ["supervise", "worker_config"]

log = logging.getLogger(__name__)
_RESTART_DELAY = 1.0  # seconds before a worker that died is started again
_PR_SET_PDEATHSIG = 1


def worker_config(config: ServerConfig, index: int, port: int) -> ServerConfig:
    """Worker ``index``'s settings: one process, the shared port, its own /metrics port."""
    metrics_port = config.metrics_port + index if config.metrics_port else 0
    return dataclasses.replace(config, workers=1, reuse_port=True, port=port, metrics_port=metrics_port)


def supervise(config: ServerConfig) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT; returns the exit status (raises StartupError if a
    worker cannot start)."""
    with _reserve_port(config.host, config.port) as port:
        if port in config.metrics_ports:  # --port 0 picked a free port that a worker's /metrics would take
            raise StartupError(
                f"--port 0 picked port {port}, inside the /metrics ports {config.metrics_ports.start}.."
                f"{config.metrics_ports.stop - 1} of the workers; pick a --port or another --metrics-port"
            )
        supervisor = _Supervisor(config, port)
        supervisor.start()
        print(f"READY {grpc_address(config.host, port)}", flush=True)
        return supervisor.run()


@contextlib.contextmanager
def _reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind (never listen on) ``host:port`` with SO_REUSEPORT: keeps a port picked for --port 0 ours while
    the workers bind it too (a bound socket that does not listen receives no connections)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        host = "localhost" if host == "localhost" else host.strip("[]")
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(f"--port {port}: cannot bind {grpc_address(host, port)} ({exc})") from None
        yield int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the supervisor dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Supervisor:
    def __init__(self, config: ServerConfig, port: int) -> None:
        self.config = config
        self.port = port
        self.children: list[subprocess.Popen[str]] = []
        self._stopping = threading.Event()

    def _spawn(self, index: int) -> subprocess.Popen[str]:
        flags = to_flags(worker_config(self.config, index, self.port))
        return subprocess.Popen(
            [sys.executable, "-m", "hamlet_server.cli", "serve", *flags],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only a prctl call, before exec
        )

    def start(self) -> None:
        """Start every worker and wait for each one's READY line; one that exits first stops them all."""
        self.children = [self._spawn(i) for i in range(self.config.workers)]
        for index, child in enumerate(self.children):
            assert child.stdout is not None
            line = child.stdout.readline()  # "" when the child exited before it was ready
            if not line.startswith("READY"):
                status = child.wait()
                self._stop_all()
                raise StartupError(
                    f"--workers: worker {index} exited with status {status} before it was ready (its message is "
                    "above); nothing is serving"
                )
            self._drain_stdout(child)
        log.info("%d workers serving on %s", len(self.children), grpc_address(self.config.host, self.port))

    def _drain_stdout(self, child: subprocess.Popen[str]) -> None:
        """Keep reading a ready worker's stdout so that nothing it prints later can block it."""
        assert child.stdout is not None
        threading.Thread(target=child.stdout.read, name="hamlet-worker-stdout", daemon=True).start()

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT: restart a worker that dies, then drain them all."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        while not self._stopping.wait(0.2):
            for index, child in enumerate(self.children):
                status = child.poll()
                if status is None or self._stopping.is_set():
                    continue
                log.error("worker %d (pid %d) exited with status %d; starting a new one in %.0f s (its streams "
                          "ended; resumable episodes continue on the others)", index, child.pid, status,
                          _RESTART_DELAY)  # fmt: skip
                if self._stopping.wait(_RESTART_DELAY):
                    break
                self.children[index] = self._spawn(index)
                self._drain_stdout(self.children[index])
        return self._stop_all()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping.is_set():
            log.warning("second %s: killing the workers", signal.Signals(signum).name)
            for child in self.children:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            return
        log.info("%s received: draining %d workers", signal.Signals(signum).name, len(self.children))
        self._stopping.set()

    def _stop_all(self) -> int:
        """SIGTERM every worker (each drains for at most --grace seconds) and wait; 0 if all exited cleanly."""
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace + 10.0
        statuses = []
        for child in self.children:
            try:
                statuses.append(child.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                child.kill()
                statuses.append(child.wait())
        return 0 if all(status == 0 for status in statuses) else 1
