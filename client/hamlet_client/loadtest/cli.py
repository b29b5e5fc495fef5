"""`hamlet-bench`: the command line of the episode-aware load tester (argument parsing, the floor, printing)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import grpc

from hamlet_client import __version__
from hamlet_client.loadtest.driver import LoadSpec, Progress, discover_model, run_load
from hamlet_client.loadtest.figures import RunFigures, format_report, median_figures, report_json
from hamlet_client.loadtest.local_run import run_local

__all__ = ["build_parser", "find_floor_command", "main", "spawn_ready"]

DESCRIPTION = """\
Load-test a Hamlet server with episodes, like Triton's perf_analyzer: N streams x M environments from one
asyncio process (raw hamlet.v1 stubs), lock-step by default or open-loop at --rate, with an optional share of
unary Predict calls. After --warmup seconds it measures for --duration seconds and prints steps/s,
env-steps/s, p50/p90/p99 step latency, errors by gRPC status code, the server's mean batch (from /metrics,
with --metrics) and the client's own CPU use (near 1.0 core: the client, not the server, is the limit).

--floor also starts the bare-gRPC floor (bench/floor.py of the repository: hamlet.v1 with no model work,
cached zero Q-values) and drives it with the same message sizes right after, printing each figure beside
the floor's and ours / floor: rates want a ratio near 1, latencies one near 1.

--local also runs the same episodes in this process with the model's verified ONNX export (fetched from the
server: HamletClient.local_policy, needs hamlet-client[local]) and prints local beside the server, same run.
"""

EPILOG = """\
examples:
  hamlet-bench --target 127.0.0.1:50051 --streams 64 --envs 1 --duration 10
  hamlet-bench --streams 256 --metrics http://127.0.0.1:9090/metrics --floor
  hamlet-bench --streams 16 --envs 32 --rate 2000 --predict-fraction 0.1 --json out.json
  hamlet-bench --target HOST1:50051 --target HOST2:50051 --streams 128     # streams spread round-robin
  hamlet-bench --model townlet-L2-lstm --streams 1 --envs 1 --local         # local vs remote inference

exit status: 0 when no call failed, 1 when some did (counted by status code), 2 for a usage error.
"""

_FLOOR_SCRIPT = Path("bench") / "floor.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hamlet-bench",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}", help="print the version and exit")
    load = p.add_argument_group("load")
    load.add_argument(
        "--target",
        action="append",
        metavar="HOST:PORT",
        help="server address; repeat for several servers (default 127.0.0.1:50051)",
    )
    load.add_argument("--model", default="", help="model name (default: the server's default model)")
    load.add_argument("--streams", type=int, default=4, help="concurrent episode streams N (default 4)")
    load.add_argument("--envs", type=int, default=1, help="environments M per stream: rows per step (default 1)")
    load.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="CALLS_PER_S",
        help="open loop: total calls/s shared by the streams (default: lock-step, as fast as "
        "answered); one call per stream in flight, late calls timed from when they were due",
    )
    load.add_argument(
        "--predict-fraction",
        type=float,
        default=0.0,
        metavar="P",
        help="share of calls that are unary Predict of the same M observations (default 0; "
        "1 = Predict only, no streams)",
    )
    load.add_argument(
        "--episode-steps",
        type=int,
        default=200,
        help="reset all environments of a stream every this many steps (0 = never; default 200)",
    )
    load.add_argument("--epsilon", type=float, default=0.0, help="exploration rate sent with every call (default 0)")
    load.add_argument("--channels", type=int, default=1, help="gRPC connections per target (default 1)")
    load.add_argument(
        "--obs-dim", type=int, default=None, help="observation width; default: read from the server's ListModels"
    )
    timing = p.add_argument_group("timing")
    timing.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    timing.add_argument("--duration", type=float, default=10.0, help="seconds measured (default 10)")
    timing.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure this many times (with --floor: ours and the floor alternately); medians",
    )
    timing.add_argument("--seed", type=int, default=0, help="seed of the random observations (default 0)")
    out = p.add_argument_group("figures")
    out.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="URL",
        help="the server's Prometheus page (http://HOST:PORT/metrics) for the mean batch; repeatable",
    )
    out.add_argument("--floor", action="store_true", help="also measure the bare-gRPC floor and print ratios")
    out.add_argument(
        "--local",
        action="store_true",
        help="also run the same episodes in this process with the model's ONNX export (onnxruntime, "
        "hamlet-client[local]) and print local / server ratios",
    )
    out.add_argument(
        "--floor-cmd",
        default=None,
        metavar="CMD",
        help="command that serves the floor and prints 'READY host:port' (default: python "
        "bench/floor.py of the repository this package was installed from)",
    )
    out.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the figures as JSON to PATH (no PATH: to stdout, the table to stderr)",
    )
    out.add_argument("--interval", type=float, default=1.0, help="seconds between live progress lines (default 1)")
    out.add_argument("--quiet", action="store_true", help="no live progress")
    return p


def find_floor_command(explicit: str | None) -> list[str]:
    """The floor's command: ``explicit`` split like a shell would, else ``python bench/floor.py`` found in the
    repository around this package or the working directory; `FileNotFoundError` saying how to fix it."""
    if explicit:
        return shlex.split(explicit)
    here = Path(__file__).resolve()
    for root in (here.parents[3], Path.cwd()):
        if (root / _FLOOR_SCRIPT).is_file():
            return [sys.executable, str(root / _FLOOR_SCRIPT)]
    raise FileNotFoundError(
        "--floor: bench/floor.py is not beside this package (an installed wheel does not ship it); run from a "
        "checkout of the repository or pass --floor-cmd 'python /path/to/bench/floor.py'"
    )


def spawn_ready(cmd: Sequence[str], timeout: float = 60.0) -> tuple[subprocess.Popen[str], str]:
    """Start a server that prints ``READY host:port``; return the process and its address."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline() if ready else ""
        if line.startswith("READY "):
            return proc, line.split()[1]
        if ready and not line:  # end of output: the process exited
            break
    _stop(proc)
    raise RuntimeError(f"{shlex.join(cmd)} did not print 'READY host:port' within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _progress_printer(stream: TextIO, label: str) -> Any:
    def show(p: Progress) -> None:
        phase = "measuring" if p.measuring else "warm-up  "
        p50 = "-" if p.p50_us != p.p50_us else f"{p.p50_us:,.0f} us"
        stream.write(
            f"[{p.elapsed_s:6.1f} s] {label:6s} {phase} {p.calls_per_s:10,.0f} calls/s "
            f"{p.env_steps_per_s:11,.0f} env-steps/s  p50 {p50:>10s}  errors {p.errors}\n"
        )
        stream.flush()

    return show


_Measured = tuple[dict[str, Any], RunFigures, RunFigures | None, RunFigures | None]


async def _measure(args: argparse.Namespace, log: TextIO) -> _Measured:
    targets = args.target or ["127.0.0.1:50051"]
    model, obs_dim = args.model, args.obs_dim
    if obs_dim is None:
        model, obs_dim, _ = await discover_model(targets[0], args.model)
    spec = LoadSpec(
        streams=args.streams,
        envs=args.envs,
        obs_dim=obs_dim,
        duration=args.duration,
        warmup=args.warmup,
        model=model,
        rate=args.rate,
        predict_fraction=args.predict_fraction,
        episode_steps=args.episode_steps,
        epsilon=args.epsilon,
        channels=args.channels,
        seed=args.seed,
    )
    mode = "lock-step" if args.rate is None else f"open loop at {args.rate:,.0f} calls/s"
    log.write(
        f"hamlet-bench: {spec.streams} streams x {spec.envs} envs, {mode}, predict share {spec.predict_fraction:g}, "
        f"model {model or '(default)'} (obs {obs_dim}), {spec.warmup:g} s warm-up + {spec.duration:g} s, "
        f"target(s) {', '.join(targets)}\n"
    )
    floor_proc = None
    floor_target = None
    if args.floor:
        floor_proc, floor_target = spawn_ready(find_floor_command(args.floor_cmd))
        log.write(f"floor: {floor_target}\n")
    ours: list[RunFigures] = []
    floors: list[RunFigures] = []
    locals_: list[RunFigures] = []
    try:
        for round_index in range(args.rounds):
            order = ["server", "floor"] if floor_target else ["server"]
            for which in order if round_index % 2 == 0 else order[::-1]:
                progress = None if args.quiet else _progress_printer(log, which)
                if which == "server":
                    ours.append(
                        await run_load(
                            spec, targets, metrics_urls=args.metrics, progress=progress, progress_interval=args.interval
                        )
                    )
                else:
                    floor_spec = LoadSpec(**{**asdict(spec), "model": ""})
                    assert floor_target is not None
                    floors.append(
                        await run_load(
                            floor_spec,
                            [floor_target],
                            label="floor",
                            progress=progress,
                            progress_interval=args.interval,
                        )
                    )
            if args.local:
                progress = None if args.quiet else _progress_printer(log, "local")
                locals_.append(
                    await asyncio.to_thread(
                        run_local, spec, targets[0], progress=progress, progress_interval=args.interval
                    )
                )
    finally:
        if floor_proc is not None:
            _stop(floor_proc)
    config = {**asdict(spec), "targets": targets, "rounds": args.rounds, "metrics": args.metrics}
    return (
        config,
        median_figures(ours),
        median_figures(floors) if floors else None,
        median_figures(locals_) if locals_ else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    to_stdout_json = args.json == "-"
    table_out = sys.stderr if to_stdout_json else sys.stdout
    try:
        config, ours, floor, local = asyncio.run(_measure(args, sys.stderr))
    except KeyboardInterrupt:  # Ctrl-C: the streams are cancelled and the floor stopped on the way out
        print("hamlet-bench: interrupted", file=sys.stderr)
        return 130
    except (ValueError, LookupError, FileNotFoundError, RuntimeError, ImportError) as exc:  # settings, model, floor
        print(f"hamlet-bench: error: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:  # ListModels failed: no server there, or not a Hamlet server
        print(f"hamlet-bench: error: ListModels failed with {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    print(format_report(ours, floor), file=table_out)
    if local is not None:
        print("\nlocal inference in this process (onnxruntime) beside the server, same run; ratio local / server:",
              file=table_out)  # fmt: skip
        print(format_report(local, ours), file=table_out)
    if args.json is not None:
        text = json.dumps(report_json(config, ours, floor, local=local), indent=2)
        if to_stdout_json:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 1 if ours.errors else 0


if __name__ == "__main__":
    sys.exit(main())
