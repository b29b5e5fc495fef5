"""Places no client can hoard, measured: watchers against a stream's throughput, a squatter against a starter.

    python bench/bench_hoarding.py [--duration 3] [--repeat 3] [--watchers 0,10,100] [--squat-seconds 5]

Watchers: `hamlet-server serve` on the trained L1 demo model with --enable-watch, one lock-step stream (4
environments) driven from this process for `--duration` s, while a second process holds N WatchEpisodes
calls on every stream and reads them as fast as it can. Printed: steps/s with 0 / 10 / 100 watchers beside
the 0-watcher baseline of the same server, for `--watch-fps 0` (every step to every watcher: how the server
behaved before the rate limit) and for the default `--watch-fps 20`.

Squatter: a server with --max-sessions 64 --start-timeout 30; a second process re-opens streams and never
starts them, as fast as it can, for `--squat-seconds`; meanwhile this process runs start + one step + close
episodes back to back. Printed: how many of the starter's episodes were served, with --max-unstarted 64
with --max-unstarted 1000 (never reached, so nothing is ended to make room: the server as it was before the
limit) and with the default 32.
Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from floor import spawn_ready

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2

MODEL, OBS_DIM, ENVS = "townlet-L1-mlp", 91, 4


def _step(rng: np.random.Generator) -> pb.StreamEpisodeRequest:
    obs = rng.random((ENVS, OBS_DIM), dtype=np.float32)
    tensor = tensor_pb2.Tensor(shape=[ENVS, OBS_DIM], dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=obs.tobytes())
    return pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=tensor))


def _start() -> pb.StreamEpisodeRequest:
    return pb.StreamEpisodeRequest(start=pb.EpisodeStart(model=MODEL, num_envs=ENVS))


def _serve(models: str, *flags: str) -> tuple[object, str]:
    cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", models, "--port", "0",
           "--metrics-port", "0", "--backend", "torch", "--log-level", "WARNING", *flags]  # fmt: skip
    return spawn_ready(cmd, cwd=ROOT)


def _child(role: str, target: str, n: int) -> tuple[object, str]:
    return spawn_ready([sys.executable, __file__, "--child", role, "--target", target, "--n", str(n)], cwd=ROOT)


# ---------------------------------------------------------------------------------------- watchers
async def _stream_rate(target: str, duration: float) -> float:
    """Lock-step steps/s of one stream over `duration` seconds."""
    rng = np.random.default_rng(0)
    request = _step(rng)
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(_start())
        await call.read()
        for _ in range(50):  # warm up
            await call.write(request)
            await call.read()
        steps, began = 0, time.perf_counter()
        while time.perf_counter() - began < duration:
            await call.write(request)
            await call.read()
            steps += 1
        elapsed = time.perf_counter() - began
        await call.done_writing()
    return steps / elapsed


async def _hold_watchers(target: str, n: int) -> None:
    """(child) N watches of every stream, each read as fast as it comes, until killed."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        await channel.channel_ready()
        calls = [stub.WatchEpisodes(pb.WatchEpisodesRequest()) for _ in range(n)]
        await asyncio.sleep(1.0)  # subscribed (the calls get no metadata before their first frame to wait on)
        print("READY watching", flush=True)

        async def drain(call: object) -> None:
            async for _ in call:  # type: ignore[attr-defined]
                pass

        await asyncio.gather(*(drain(c) for c in calls), return_exceptions=True)


def _rate_with_watchers(target: str, n: int, duration: float) -> float:
    child = _child("watchers", target, n) if n else None
    try:
        return asyncio.run(_stream_rate(target, duration))
    finally:
        if child is not None:
            child[0].terminate()  # type: ignore[attr-defined]
            child[0].wait(timeout=20)  # type: ignore[attr-defined]


def _watch_rows(models: str, args: argparse.Namespace) -> None:
    print(f"\nstream steps/s (1 lock-step stream, {ENVS} envs, {MODEL}) with N watchers of every stream, "
          f"{args.duration:g} s each, median of {args.repeat} interleaved runs, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'server':<36}" + "".join(f"{f'{n} watchers':>16}" for n in args.watchers))
    for fps in ("0", "20"):
        server, target = _serve(models, "--enable-watch", "--max-watchers", "1000", "--watch-fps", fps)
        samples: dict[int, list[float]] = {n: [] for n in args.watchers}
        try:
            for _ in range(args.repeat):  # interleaved, so that load from elsewhere falls on every column
                for n in args.watchers:
                    samples[n].append(_rate_with_watchers(target, n, args.duration))
        finally:
            server.terminate()  # type: ignore[attr-defined]
            server.wait(timeout=20)  # type: ignore[attr-defined]
        label = "--watch-fps 0 (every step, as before)" if fps == "0" else "--watch-fps 20 (default)"
        rates = [statistics.median(samples[n]) for n in args.watchers]
        cells = "".join(f"{r:>9.0f} ({r / rates[0]:.2f}x)" for r in rates)
        print(f"{label:<36}{cells}")


# ---------------------------------------------------------------------------------------- squatter
async def _squat(target: str) -> None:
    """(child) Re-open streams without ever starting them, keeping each until the server ends it."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        calls = []
        print("READY squatting", flush=True)
        while True:
            call = stub.StreamEpisode()
            calls.append(call)
            with contextlib.suppress(grpc.aio.AioRpcError):  # refused or ended at once: open the next one
                await call.wait_for_connection()
            calls = [c for c in calls if not c.done()]
            await asyncio.sleep(0)


async def _starts(target: str, seconds: float) -> tuple[int, int]:
    """(served, tried) start + one step + close episodes in `seconds`."""
    rng = np.random.default_rng(1)
    served = tried = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            tried += 1
            call = stub.StreamEpisode()
            try:
                await call.write(_start())
                await call.write(_step(rng))
                await call.done_writing()
                kinds = [r.WhichOneof("kind") async for r in call]
                served += kinds == ["started", "step"]
            except Exception:  # refused at open (SESSION_LIMIT) or ended before its start
                call.cancel()
                await asyncio.sleep(0.05)
    return served, tried


def _squat_rows(models: str, args: argparse.Namespace) -> None:
    print(f"\nsquatter vs starter: --max-sessions 64 --start-timeout 30, a squatter re-opening unstarted streams, "
          f"the starter's episodes over {args.squat_seconds:g} s")  # fmt: skip
    rows = (("1000", "--max-unstarted 1000 (never reached: as before)"), ("32", "--max-unstarted 32 (default)"))
    for unstarted, label in rows:
        server, target = _serve(models, "--max-sessions", "64", "--start-timeout", "30", "--max-unstarted", unstarted)
        try:
            squatter = _child("squatter", target, 0)
            time.sleep(1.0)  # the squatter fills what it can
            try:
                served, tried = asyncio.run(_starts(target, args.squat_seconds))
            finally:
                squatter[0].terminate()  # type: ignore[attr-defined]
                squatter[0].wait(timeout=20)  # type: ignore[attr-defined]
        finally:
            server.terminate()  # type: ignore[attr-defined]
            server.wait(timeout=20)  # type: ignore[attr-defined]
        print(f"{label:<44}{served:>6} of {tried:<6} episodes served")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per watcher figure")
    parser.add_argument("--watchers", type=lambda s: [int(x) for x in s.split(",")], default=[0, 10, 100])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per watcher figure (median)")
    parser.add_argument("--squat-seconds", type=float, default=5.0)
    parser.add_argument("--only", choices=["watchers", "squatter"], help="run one part")
    parser.add_argument("--child", choices=["watchers", "squatter"], help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "watchers":
        asyncio.run(_hold_watchers(args.target, args.n))
        return 0
    if args.child == "squatter":
        asyncio.run(_squat(args.target))
        return 0
    if args.watchers[0] != 0:
        parser.error("--watchers must start with 0 (the baseline)")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "models" / MODEL, Path(tmp) / MODEL)
        if args.only in (None, "watchers"):
            _watch_rows(tmp, args)
        if args.only in (None, "squatter"):
            _squat_rows(tmp, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
