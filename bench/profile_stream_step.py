"""Where one lone stream step's time goes in the server: cProfile of a 1-env L2 stream on the onnx backend.

    python bench/profile_stream_step.py [--steps 3000] [--top 20] [--out stream.prof]

Runs `HamletServer` (onnx backend, the L2 demo model, forwards inline on the event loop as shipped) on this
process's event loop and drives it from a client process (bench/peer_client.py `latency`, one request at a
time): first an unprofiled run (its p50 is the step as a client sees it), then a profiled one. The profile
covers the server's event-loop thread only (where every Python line of a step runs; gRPC's C core polls in
its own threads). Each function's own time is charged to a part of the server by its file, and a built-in's
to the part that called it. Prints the parts in us per step, then the heaviest functions. cProfile slows
Python code more than native code, so read the shares, not the absolute sum. No server code is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hamlet_server.config import ServerConfig
from hamlet_server.server import HamletServer

ROOT = Path(__file__).resolve().parent.parent
MODEL = "townlet-L2-lstm"

__all__ = ["IDLE", "PARTS", "part_of", "parts_per_step"]

IDLE = "idle: the loop waiting in epoll for the next request"

# (part, substrings of the file path): the first that matches names the part
PARTS = (
    ("forward: onnxruntime session.run", ("onnxruntime",)),
    ("backend wrapper (backends.py)", ("hamlet_server/backends.py", "townlet/inference")),
    ("batcher (batcher.py)", ("hamlet_server/batcher.py",)),
    ("session table (sessions.py)", ("hamlet_server/sessions.py",)),
    ("stream loop (streams.py)", ("hamlet_server/streams.py",)),
    ("servicer (servicer.py)", ("hamlet_server/servicer.py",)),
    ("tensor decode/encode (tensor_codec.py)", ("hamlet_server/tensor_codec.py",)),
    ("metrics (metrics.py, prometheus_client)", ("hamlet_server/metrics.py", "prometheus_client")),
    (
        "budget, memory, tracing, logs",
        ("hamlet_server/budget.py", "hamlet_server/memory.py", "hamlet_server/tracing.py", "hamlet_server/logs.py"),
    ),
    ("other hamlet_server", ("hamlet_server/",)),
    ("grpc aio (Python/Cython side)", ("grpc",)),
    ("asyncio event loop", ("asyncio",)),
    ("torch (called from above)", ("torch",)),
    ("numpy (called from above)", ("numpy",)),
)


def part_of(func: tuple[str, int, str]) -> str | None:
    """The part of a pstats function key ``(file, line, name)``; None for a built-in (file ``~``)."""
    path, _, name = func
    if path == "~":
        if "onnxruntime" in name or "InferenceSession" in name:
            return PARTS[0][0]
        if "epoll" in name or "select" in name:
            return IDLE
        return None
    for part, needles in PARTS:
        if any(n in path for n in needles):
            return part
    return "other Python"


def parts_per_step(stats: dict[Any, Any], steps: int) -> dict[str, float]:
    """Own time (us per step) per part; a built-in's own time goes to its callers' parts, edge by edge."""
    totals: dict[str, float] = defaultdict(float)
    for func, (_, _, own, _, callers) in stats.items():
        part = part_of(func)
        if part is not None:
            totals[part] += own
            continue
        if not callers:
            totals["other Python"] += own
        for caller, edge in callers.items():
            totals[part_of(caller) or "other Python"] += edge[2]
    return {part: seconds / steps * 1e6 for part, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}


async def _client(target: str, obs: Path, steps: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "peer_client.py"), "latency", f"hamlet-stream@{target}",
        "--obs", str(obs), "--n", str(steps), "--warmup", "200", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the client failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _profile(args: argparse.Namespace, work: Path) -> tuple[dict[str, Any], dict[str, Any], cProfile.Profile]:
    (work / "models").mkdir()
    (work / "models" / MODEL).symlink_to(ROOT / "models" / MODEL)
    obs = work / "obs.npy"
    np.save(obs, np.random.default_rng(0).random((4096, 54), dtype=np.float32))
    config = ServerConfig(models=work / "models", port=0, backend="onnx", poll_interval=0, metrics_port=0,
                          log_level="WARNING")  # fmt: skip
    server = HamletServer(config)
    await server.start()
    target = f"127.0.0.1:{server.port}"
    try:
        plain = await _client(target, obs, args.steps)
        profiler = cProfile.Profile()
        profiler.enable()
        profiled = await _client(target, obs, args.steps)
        profiler.disable()
    finally:
        await server.drain(grace=0.5)
    return plain, profiled, profiler


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="steps measured per run (default 3000)")
    ap.add_argument("--top", type=int, default=20, help="heaviest functions listed (default 20)")
    ap.add_argument("--out", type=Path, help="also dump the raw profile here (pstats / snakeviz)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, profiled, profiler = asyncio.run(_profile(args, Path(tmp)))
    # The client's 200 warm-up steps ran under the profiler too: count them
    steps = args.steps + 200
    stats = pstats.Stats(profiler)
    if args.out:
        stats.dump_stats(str(args.out))
    parts = parts_per_step(stats.stats, steps)  # type: ignore[attr-defined]
    print(f"one {MODEL} stream, 1 env, onnx backend: client p50 {plain['p50_us']:.0f} us unprofiled, "
          f"{profiled['p50_us']:.0f} us profiled; server's event-loop thread, us per step (profiled):")  # fmt: skip
    for part, us in parts.items():
        print(f"  {us:7.1f}  {part}")
    busy = sum(us for part, us in parts.items() if part != IDLE)
    print(f"  {busy:7.1f}  busy on the event-loop thread (all but idle)")
    print(f"\nheaviest {args.top} functions by own time (us per step, calls per step):")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[: args.top]  # type: ignore[attr-defined]
    for (path, line, name), (_, calls, own, cum, _) in rows:
        where = name if path == "~" else f"{Path(path).parent.name}/{Path(path).name}:{line} {name}"
        print(f"  {own / steps * 1e6:7.1f} own {cum / steps * 1e6:8.1f} cum {calls / steps:5.1f}x  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
