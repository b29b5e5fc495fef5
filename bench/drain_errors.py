"""Errors that reach user code while replicas drain: two replicas, SIGTERM one of them N times.

    python bench/drain_errors.py                      # 10 drains, grace 5 s, 2 Predict threads, 8 streams
    python bench/drain_errors.py --drains 3 --streams 4

Two ``hamlet-server serve`` processes on fixed loopback ports serve the demo models. One client process runs
the SDK the way an application would, against both targets (``round_robin``):

- ``--predict-threads`` threads call ``HamletClient.predict`` on the L1 model in a loop;
- ``--streams`` asyncio coroutines play short L2 episodes (``--envs`` environments, ``--episode-steps``
  steps, ``resume=True``) through ``AsyncHamletClient``, opening a new one as each ends.

Meanwhile replica A is sent SIGTERM (a drain), waited for, restarted on the same port, and given a second to
be reconnected, ``--drains`` times. Every exception that reaches the loops is counted: typed (a
``HamletError``, by class and reason) or untyped (anything else, e.g. a raw ``grpc.RpcError``). The figures
go in docs/SCALING.md (*Stopping a pod*); the goal is zero errors of either kind with a healthy second replica.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import numpy as np
from ports import free_port

from hamlet_client import AsyncHamletClient, HamletClient, HamletError

ROOT = Path(__file__).resolve().parent.parent
PREDICT_MODEL, STREAM_MODEL = "townlet-L1-mlp", "townlet-L2-lstm"


class Replica:
    """One ``hamlet-server serve`` process on a fixed port (restartable on the same port)."""

    def __init__(self, port: int, grace: float, extra: list[str]) -> None:
        self.port, self.grace, self.extra = port, grace, extra
        self.proc: subprocess.Popen[str] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", str(ROOT / "models"),
               "--port", str(self.port), "--metrics-port", "0", "--poll-interval", "0", "--grace", str(self.grace),
               "--log-level", "warning", *self.extra]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("HAMLET_")} | {"PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"replica on port {self.port} did not start: {line!r}")

    def drain(self) -> float:
        """SIGTERM and wait for the exit; returns the seconds the drain took."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=self.grace + 30)
        return time.monotonic() - began

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class Tally:
    """Calls that succeeded and exceptions that reached user code, by kind; thread-safe."""

    def __init__(self) -> None:
        self.ok: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def success(self, what: str) -> None:
        with self._lock:
            self.ok[what] += 1

    def error(self, what: str, exc: BaseException) -> None:
        if isinstance(exc, HamletError):
            key = f"{what}: typed {type(exc).__name__} ({exc.code.name if exc.code else '-'}, {exc.reason or '-'})"
        else:
            key = f"{what}: UNTYPED {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:80]}"
        with self._lock:
            self.errors[key] += 1


def snapshot_key_args(folder: Path) -> list[str]:
    """``--snapshot-key-file`` with a fresh key for servers that sign episode snapshots (resuming needs one key
    on every replica); nothing for servers without the flag."""
    from hamlet_server.config import ServerConfig

    if "snapshot_key_file" not in {f.name for f in dataclasses.fields(ServerConfig)}:
        return []
    key_file = folder / "snapshot-keys"
    key_file.write_text(secrets.token_hex(32) + "\n")
    return ["--snapshot-key-file", str(key_file)]


def predict_loop(targets: list[str], tally: Tally, stop: threading.Event) -> None:
    obs = np.zeros(91, np.float32)
    with HamletClient(targets, timeout=30.0) as client:
        while not stop.is_set():
            try:
                client.predict(obs, model=PREDICT_MODEL)
                tally.success("predict")
            except Exception as exc:  # counted: this is what the measurement is about
                tally.error("predict", exc)
                time.sleep(0.05)


async def stream_loop(client: AsyncHamletClient, args: argparse.Namespace, tally: Tally, stop: threading.Event) -> None:
    rng = np.random.default_rng()
    while not stop.is_set():
        try:
            async with client.episode(STREAM_MODEL, num_envs=args.envs, resume=True) as episode:
                for _ in range(args.episode_steps):
                    await episode.step(rng.random((args.envs, 54), dtype=np.float32))
                    tally.success("step")
                    await asyncio.sleep(0.002)  # the simulator's own work
            tally.success("episode")
        except Exception as exc:  # counted
            tally.error("episode", exc)
            await asyncio.sleep(0.05)


def streams_thread(targets: list[str], args: argparse.Namespace, tally: Tally, stop: threading.Event) -> None:
    async def run() -> None:
        async with AsyncHamletClient(targets, timeout=30.0) as client:
            await asyncio.gather(*(stream_loop(client, args, tally, stop) for _ in range(args.streams)))

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drains", type=int, default=10, help="SIGTERMs of replica A (restarted after each)")
    parser.add_argument("--grace", type=float, default=5.0, help="the replicas' --grace")
    parser.add_argument("--predict-threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--envs", type=int, default=2)
    parser.add_argument("--episode-steps", type=int, default=30)
    parser.add_argument("--settle", type=float, default=1.5, help="seconds of load before each drain")
    parser.add_argument("--server-arg", action="append", default=[], help="an extra flag for both replicas")
    args = parser.parse_args()

    extra = [*args.server_arg, *snapshot_key_args(Path(tempfile.mkdtemp(prefix="drain-errors-")))]
    a, b = Replica(free_port(), args.grace, extra), Replica(free_port(), args.grace, extra)
    tally, stop = Tally(), threading.Event()
    workers: list[threading.Thread] = []
    try:
        a.start()
        b.start()
        targets = [a.target, b.target]
        workers = [
            threading.Thread(target=predict_loop, args=(targets, tally, stop)) for _ in range(args.predict_threads)
        ]
        workers.append(threading.Thread(target=streams_thread, args=(targets, args, tally, stop)))
        for worker in workers:
            worker.start()
        for n in range(1, args.drains + 1):
            time.sleep(args.settle)
            took = a.drain()
            a.start()
            print(f"drain {n}: replica A exited {took:.2f} s after SIGTERM; errors so far {sum(tally.errors.values())}",
                  flush=True)  # fmt: skip
        time.sleep(args.settle)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        a.stop()
        b.stop()
    print(f"\n{args.drains} drains; succeeded: {dict(tally.ok)}")
    typed = sum(n for k, n in tally.errors.items() if ": typed " in k)
    untyped = sum(tally.errors.values()) - typed
    print(f"errors reaching user code: {typed} typed, {untyped} untyped")
    for key, count in sorted(tally.errors.items()):
        print(f"  {count:5d}  {key}")


if __name__ == "__main__":
    main()
