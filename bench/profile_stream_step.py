"""Where one lone stream step's time goes in the server: timers and cProfile of a 1-env L2 stream (onnx backend).

    python bench/profile_stream_step.py [--steps 3000] [--top 20] [--out stream.prof]

Runs `HamletServer` (onnx backend, the L2 demo model, forwards inline on the event loop as shipped) on this
process's event loop and drives it from a client process (bench/peer_client.py `latency`, one request at a
time), in three runs:

1. the bare-gRPC floor (bench/floor.py, its own process): what a step costs with no work of ours;
2. ours with wall-clock timers wrapped (from here, not in the server's code) around the servicer's `_handle`
   (a step from its parsed request message to its response message), `StepBatcher.submit`,
   `StepBatcher._forward` (gather, forward, scatter) and `OnnxModel.forward` (the onnx backend's session):
   medians per call beside the client's round trip;
3. ours under cProfile, on the server's event-loop thread only (where every Python line of a step runs;
   gRPC's C core polls in its own threads). Each function's own time is charged to a part of the server by
   its file, and a built-in's to the part that called it. Cython (grpc's aio) is invisible to cProfile: its
   time shows as the own time of the coroutine awaiting it (the servicer's `_run` for `context.read()` and
   `context.write()`). cProfile slows Python code more than native code: read its shares, not its sum.

A wrapped name that the server no longer has (a refactor) is reported and skipped. No server code is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from hamlet_server import batcher, servicer
from hamlet_server.config import ServerConfig
from hamlet_server.server import HamletServer
from townlet.inference import onnx_runtime

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from floor import spawn_ready

MODEL = "townlet-L2-lstm"
# (label, owner, attribute): the spans the timers measure, outermost first
SPANS = (
    ("servicer _handle: parsed request -> response message", servicer, "InferenceServicer._handle"),
    ("  StepBatcher.submit -> result", batcher, "StepBatcher.submit"),
    ("    StepBatcher._forward: gather, forward, scatter", batcher, "StepBatcher._forward"),
    ("      OnnxModel.forward (session.run and its checks)", onnx_runtime, "OnnxModel.forward"),
)

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
        if "of 'select." in name or "method select." in name:  # epoll/poll/select waits; not index_select
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


def _timer(fn: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    """``fn`` (sync or async) wrapped to append each call's wall seconds to ``into``."""
    if asyncio.iscoroutinefunction(fn):

        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - start)

        return timed_async

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    return timed


@contextmanager
def _timers() -> Iterator[dict[str, list[float]]]:
    """Wrap every span of `SPANS` that exists for the duration; yields label -> call durations (s)."""
    found: dict[str, list[float]] = {}
    undo = []
    for label, module, dotted in SPANS:
        cls_name, attr = dotted.split(".")
        cls = getattr(module, cls_name, None)
        fn = getattr(cls, attr, None) if cls is not None else None
        if fn is None:
            print(f"  (no {module.__name__}.{dotted} any more: span {label.strip()!r} skipped)")
            continue
        found[label] = []
        setattr(cls, attr, _timer(fn, found[label]))
        undo.append((cls, attr, fn))
    try:
        yield found
    finally:
        for cls, attr, fn in undo:
            setattr(cls, attr, fn)


async def _profile(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The three runs of the module docstring; returns their figures."""
    (work / "models").mkdir()
    (work / "models" / MODEL).symlink_to(ROOT / "models" / MODEL)
    obs = work / "obs.npy"
    np.save(obs, np.random.default_rng(0).random((4096, 54), dtype=np.float32))
    floor, floor_target = spawn_ready([sys.executable, str(ROOT / "bench" / "floor.py")])
    try:
        floor_run = await _client(floor_target, obs, args.steps)
    finally:
        floor.terminate()
        floor.wait(timeout=30)
    config = ServerConfig(models=work / "models", port=0, backend="onnx", poll_interval=0, metrics_port=0,
                          log_level="WARNING")  # fmt: skip
    server = HamletServer(config)
    await server.start()
    target = f"127.0.0.1:{server.port}"
    try:
        with _timers() as spans:
            timed = await _client(target, obs, args.steps)
        profiler = cProfile.Profile()
        profiler.enable()
        profiled = await _client(target, obs, args.steps)
        profiler.disable()
    finally:
        await server.drain(grace=0.5)
    return {"floor": floor_run, "timed": timed, "spans": spans, "profiled": profiled, "profiler": profiler}


def _print_spans(runs: dict[str, Any], steps: int) -> None:
    floor_p50, ours_p50 = runs["floor"]["p50_us"], runs["timed"]["p50_us"]
    print(f"one {MODEL} stream, 1 env, onnx backend, {steps} steps after 200 warm-up; medians in us:")
    print(f"  {floor_p50:7.0f}  client round trip, bare-gRPC floor (no work of ours)")
    print(f"  {ours_p50:7.0f}  client round trip, ours (timers on)")
    handle = None
    for label, durations in runs["spans"].items():
        if durations:
            median = statistics.median(durations) * 1e6
            handle = median if handle is None else handle
            print(f"  {median:7.0f}  {label}  ({len(durations) / (steps + 200):.1f} calls per step)")
    if handle is not None:
        print(f"  {ours_p50 - handle:7.0f}  outside _handle: gRPC read + write, event loop, network, the client")
        print(f"  {ours_p50 - handle - floor_p50:7.0f}  of which over the floor's whole round trip")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="steps measured per run (default 3000)")
    ap.add_argument("--top", type=int, default=20, help="heaviest functions listed (default 20)")
    ap.add_argument("--out", type=Path, help="also dump the raw profile here (pstats / snakeviz)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = asyncio.run(_profile(args, Path(tmp)))
    _print_spans(runs, args.steps)
    # The client's 200 warm-up steps ran under the profiler too: count them
    steps = args.steps + 200
    stats = pstats.Stats(runs["profiler"])
    if args.out:
        stats.dump_stats(str(args.out))
    parts = parts_per_step(stats.stats, steps)  # type: ignore[attr-defined]
    print(f"\ncProfile (client p50 {runs['profiled']['p50_us']:.0f} us profiled): the server's event-loop thread, "
          f"own time in us per step by part:")  # fmt: skip
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
