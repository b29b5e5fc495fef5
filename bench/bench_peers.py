"""Hamlet's stream and Predict beside a plain FastAPI endpoint, in one run (issue 25's `make bench` row).

    python bench/bench_peers.py [--rounds 3] [--duration 3] [--n 1000] [--clients 64] [--json OUT.json]
        [--baseline-args FLAGS] [--sync-floor] [--tcp-floor] [--tcp-lane] [--server-args FLAGS] [--no-floor]

Exports the L2 demo model (models/townlet-L2-lstm) to ONNX and starts, on loopback, `hamlet-server serve` on
it (onnx backend) and the FastAPI peer (bench/peer_fastapi.py: FastAPI + uvicorn, raw float32 bytes in and
out, the same export in onnxruntime with 1 thread, stateless). After a Q-value check (a 50-step rollout on
each target must agree), every round measures, in an order that flips each round: b1 latency (one request at
a time, p50) and then lock-step throughput (`--clients` asyncio clients of 1 env each on one connection) of
Hamlet's `StreamEpisode` (state on the server), Hamlet's `Predict` (hidden in/out), FastAPI, and the floor
with the forward (bench/floor.py --compute: grpc.aio serving hamlet.v1 with the same export's forward inline per
request, no batching, validation or metrics: the least any server of ours on grpcio's asyncio server can cost).
Each measurement is its own client process (bench/peer_client.py). Prints the medians beside FastAPI's with the
ratios, the issue's targets (p50 <= 0.9x FastAPI's, Predict throughput >= 1x, stream throughput >= 3x), and what
stands between us and them: our own work (ours minus the floor + forward) and the transport (the floor + forward
over FastAPI). The client shares the box's cores with the servers, as in ../shared/bench/peers. Numbers, not
assertions.

Optional targets, measured in the same rounds:
- `--baseline-args "--forward-thread true"`: a second server of ours with those flags, so that a setting and
  its baseline are measured in the same rounds;
- `--sync-floor`: the floor + forward on grpcio's thread-pool server instead of grpc.aio;
- `--tcp-floor`: FastAPI's own model code on length-prefixed frames over plain TCP (bench/floor_tcp.py), i.e.
  what a step costs with neither HTTP nor gRPC carrying it;
- `--tcp-lane`: our own server (same flags) with the same hamlet.v1 messages in frames over plain TCP handed to
  its servicer (bench/lane_tcp.py), i.e. what a step of ours costs with gRPC taken out of the way.
`--server-args` passes more flags to the first server.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "tests"))

from floor import spawn_ready
from ports import free_port

__all__ = ["GOALS", "TARGETS", "Figures", "format_report", "goal_rows", "medians", "ratios"]

MODEL = "townlet-L2-lstm"
PEER = "fastapi"
TARGETS = ("hamlet-stream", "hamlet-predict", PEER, "floor-stream", "floor-predict", "floor-sync-stream",
           "floor-sync-predict", "floor-tcp", "lane-stream", "lane-predict", "base-stream", "base-predict")  # fmt: skip
_LABELS = {
    "hamlet-stream": "Hamlet StreamEpisode",
    "hamlet-predict": "Hamlet Predict",
    PEER: "FastAPI + uvicorn",
    "floor-stream": "floor+forward stream",
    "floor-predict": "floor+forward Predict",
    "floor-sync-stream": "sync floor+fwd stream",
    "floor-sync-predict": "sync floor+fwd Predict",
    "floor-tcp": "framed TCP + forward",
    "lane-stream": "ours on framed TCP, stream",
    "lane-predict": "ours on framed TCP, Predict",
    "base-stream": "Stream, baseline",
    "base-predict": "Predict, baseline",
}
_FLOOR_OF = {"hamlet-stream": "floor-stream", "hamlet-predict": "floor-predict", "base-stream": "floor-stream",
             "base-predict": "floor-predict"}  # fmt: skip

# Issue 25's targets: (what, target, figure, goal as a multiple of FastAPI's, True when the ratio must be at most it)
GOALS = (
    ("stream b1 p50 <= 0.9x FastAPI", "hamlet-stream", "p50_us", 0.9, True),
    ("Predict b1 p50 <= 0.9x FastAPI", "hamlet-predict", "p50_us", 0.9, True),
    ("Predict steps/s >= 1x FastAPI", "hamlet-predict", "steps_per_s", 1.0, False),
    ("stream steps/s >= 3x FastAPI", "hamlet-stream", "steps_per_s", 3.0, False),
)


@dataclass(frozen=True)
class Figures:
    """The medians of one target over the rounds: b1 latency p50 (us) and lock-step steps/s."""

    p50_us: float
    steps_per_s: float


def medians(runs: list[dict[str, Any]]) -> dict[str, Figures]:
    """Runs (``{"key": target, "mode": "latency" | "tput", "p50_us" | "steps_per_s": ...}``) -> medians per target
    (Hamlet's two and FastAPI's always; the floors' and the baseline's when measured)."""
    out = {}
    measured = {r["key"] for r in runs}
    for key in [k for k in TARGETS if k in measured or k in TARGETS[:3]]:  # ours and FastAPI's always
        p50s = [r["p50_us"] for r in runs if r["key"] == key and r["mode"] == "latency"]
        rates = [r["steps_per_s"] for r in runs if r["key"] == key and r["mode"] == "tput"]
        if not p50s or not rates:
            raise ValueError(f"expected latency and tput runs of {key}, got {len(p50s)} and {len(rates)}")
        out[key] = Figures(p50_us=statistics.median(p50s), steps_per_s=statistics.median(rates))
    return out


def ratios(figures: dict[str, Figures]) -> dict[str, Figures]:
    """Each target's figures over FastAPI's (FastAPI's own row is 1.0, 1.0)."""
    peer = figures[PEER]
    return {
        key: Figures(p50_us=f.p50_us / peer.p50_us, steps_per_s=f.steps_per_s / peer.steps_per_s)
        for key, f in figures.items()
    }


def goal_rows(figures: dict[str, Figures]) -> list[tuple[str, float, bool]]:
    """Issue 25's targets: ``(what, measured ratio to FastAPI, met)``."""
    rel = ratios(figures)
    rows = []
    for what, key, field, goal, at_most in GOALS:
        value = getattr(rel[key], field)
        rows.append((what, value, value <= goal if at_most else value >= goal))
    return rows


def format_report(figures: dict[str, Figures]) -> str:
    """The table (medians, ratios to FastAPI) and the goal rows, as printed."""
    rel = ratios(figures)
    lines = [f"{'medians':22s} {'b1 p50':>10s} {'steps/s':>9s} {'p50 / FastAPI':>14s} {'steps/s / FastAPI':>18s}"]
    for key in [k for k in TARGETS if k in figures]:
        f, r = figures[key], rel[key]
        lines.append(f"{_LABELS[key]:22s} {f.p50_us:7.0f} us {f.steps_per_s:9,.0f} {r.p50_us:13.2f}x "
                     f"{r.steps_per_s:17.2f}x")  # fmt: skip
    lines.append("\ngoals (issue 25)")
    for what, value, met in goal_rows(figures):
        lines.append(f"  {'met' if met else 'NOT met':8s}{what:32s} {value:6.2f}x")
    floors = [(key, floor) for key, floor in _FLOOR_OF.items() if floor in figures and key in figures]
    if floors:
        lines.append("\nwhat stands between us and 0.9x FastAPI's b1 p50 (floor + forward: grpc.aio, no work of ours)")
        for key, floor in floors:
            ours, least = figures[key].p50_us, figures[floor].p50_us
            lines.append(f"  {_LABELS[key]:22s} our own work {ours - least:5.0f} us; the floor + forward alone is "
                         f"{rel[floor].p50_us:.2f}x FastAPI's p50")  # fmt: skip
            sync = floor.replace("floor-", "floor-sync-")
            if sync in figures and key.startswith("hamlet"):
                lines.append(f"  {'':22s} on grpcio's thread-pool server instead of grpc.aio it is "
                             f"{rel[sync].p50_us:.2f}x")  # fmt: skip
    if "floor-tcp" in figures:
        lines.append(f"  FastAPI's model on length-prefixed frames over plain TCP (no HTTP, no gRPC) is "
                     f"{rel['floor-tcp'].p50_us:.2f}x FastAPI's p50")  # fmt: skip
    for key in ("lane-stream", "lane-predict"):
        if key in figures:
            own = ""
            if "floor-tcp" in figures:
                own = f" (our own work {figures[key].p50_us - figures['floor-tcp'].p50_us:.0f} us)"
            lines.append(f"  {_LABELS[key]} (our servicer, same messages on those frames) is {rel[key].p50_us:.2f}x "
                         f"FastAPI's p50{own} and {rel[key].steps_per_s:.2f}x its steps/s")  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------- running it
def _client(args: argparse.Namespace, mode: str, target: str, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "peer_client.py"), mode, target, "--obs", str(args.obs_path), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {target} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _q_check(args: argparse.Namespace, targets: dict[str, str], work: Path) -> float:
    """Max |Q| difference between the targets over a 50-step rollout from zero state (each does the real work)."""
    qs = []
    for key, target in targets.items():
        _client(args, "rollout", target, "--steps", "50", "--out", str(work / f"{key}.npy"))
        qs.append(np.load(work / f"{key}.npy"))
    return max(float(np.abs(q - qs[0]).max()) for q in qs)


def _measure(args: argparse.Namespace, targets: dict[str, str]) -> list[dict[str, Any]]:
    runs = []
    for round_index in range(args.rounds):
        order = list(targets) if round_index % 2 == 0 else list(targets)[::-1]
        plan = [("latency", k, ["--n", str(args.n), "--warmup", str(args.warmup_requests)]) for k in order]
        plan += [("tput", k, ["--clients", str(args.clients), "--duration", str(args.duration)]) for k in order]
        for mode, key, extra in plan:
            run = {"round": round_index, "key": key, **_client(args, mode, targets[key], *extra)}
            runs.append(run)
            figure = f"p50 {run['p50_us']:7.0f} us" if mode == "latency" else f"{run['steps_per_s']:9,.0f} steps/s"
            print(f"round {round_index + 1} {mode:7s} {_LABELS[key]:22s} {figure}", flush=True)
    return runs


def _start_servers(
    work: Path,
    clients: int,
    floor: bool,
    sync_floor: bool,
    tcp_floor: bool,
    tcp_lane: bool,
    server_args: list[str],
    baseline_args: list[str] | None,
) -> tuple[list[subprocess.Popen[str]], dict[str, str]]:
    from townlet.inference import HamletModel

    checkpoint = max((ROOT / "models" / MODEL).glob("model_ep*.pt"))
    onnx = HamletModel.load(checkpoint).export_to_onnx(work / "l2.onnx", verify=True)
    (work / "models").mkdir()
    (work / "models" / MODEL).symlink_to(ROOT / "models" / MODEL)
    procs = []
    peer, peer_addr = spawn_ready([sys.executable, str(BENCH / "peer_fastapi.py"), "--onnx", str(onnx)])
    procs.append(peer)

    def serve(*flags: str, command: tuple[str, ...] = ("-m", "hamlet_server.cli", "serve")) -> str:
        # the clients open their streams at once: more than the default 32 can be open before the loop reads
        # their starts (RESOURCE_EXHAUSTED)
        hamlet, addr = spawn_ready([sys.executable, *command, "--models", str(work / "models"), "--port", "0",
                                    "--backend", "onnx", "--poll-interval", "0",
                                    "--metrics-port", str(free_port()), "--log-level", "WARNING",
                                    "--max-unstarted", str(max(32, 2 * clients)), *flags])  # fmt: skip
        procs.append(hamlet)
        return addr

    hamlet_addr = serve(*server_args)
    targets = {"hamlet-stream": f"hamlet-stream@{hamlet_addr}", "hamlet-predict": f"hamlet-predict@{hamlet_addr}",
               PEER: f"http@{peer_addr}"}  # fmt: skip
    if floor:  # serves hamlet.v1 too: the same client measures it as it measures ours
        least, least_addr = spawn_ready([sys.executable, str(BENCH / "floor.py"), "--compute", str(onnx)])
        procs.append(least)
        targets |= {"floor-stream": f"hamlet-stream@{least_addr}", "floor-predict": f"hamlet-predict@{least_addr}"}
    if sync_floor:
        sync, sync_addr = spawn_ready([sys.executable, str(BENCH / "floor.py"), "--compute", str(onnx), "--sync"])
        procs.append(sync)
        targets |= {
            "floor-sync-stream": f"hamlet-stream@{sync_addr}",
            "floor-sync-predict": f"hamlet-predict@{sync_addr}",
        }
    if baseline_args is not None:  # a second server of ours with other flags: both in the same rounds
        base_addr = serve(*baseline_args)
        targets |= {"base-stream": f"hamlet-stream@{base_addr}", "base-predict": f"hamlet-predict@{base_addr}"}
    if tcp_floor:
        tcp, tcp_addr = spawn_ready([sys.executable, str(BENCH / "floor_tcp.py"), "--onnx", str(onnx)])
        procs.append(tcp)
        targets["floor-tcp"] = f"tcp@{tcp_addr}"
    if tcp_lane:  # our servicer behind frames instead of gRPC: prints READY with the lane's address
        lane_addr = serve(*server_args, command=(str(BENCH / "lane_tcp.py"),))
        targets |= {"lane-stream": f"lane-stream@{lane_addr}", "lane-predict": f"lane-predict@{lane_addr}"}
    return procs, targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over them (default 3)")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per throughput run (default 3)")
    ap.add_argument("--n", type=int, default=1000, help="requests per latency run (default 1000)")
    ap.add_argument("--warmup-requests", type=int, default=200, help="unmeasured requests first (default 200)")
    ap.add_argument("--clients", type=int, default=64, help="lock-step clients of the throughput runs (default 64)")
    ap.add_argument("--no-floor", action="store_true",
                    help="leave out the floor + forward (bench/floor.py --compute), which shows what the transport "
                         "and our own work each cost")  # fmt: skip
    ap.add_argument(
        "--sync-floor",
        action="store_true",
        help="also the floor + forward on grpcio's thread-pool server (the other Python gRPC server)",
    )
    ap.add_argument(
        "--tcp-floor",
        action="store_true",
        help="also the FastAPI peer's model on length-prefixed frames over plain TCP (bench/floor_tcp.py)",
    )
    ap.add_argument(
        "--tcp-lane",
        action="store_true",
        help="also our own server with the same messages in frames over plain TCP (bench/lane_tcp.py)",
    )
    ap.add_argument(
        "--baseline-args",
        help='also a second server of ours with these flags, measured beside the first, e.g. "--forward-thread true"',
    )
    ap.add_argument("--server-args", default="",
                    help='more `hamlet-server serve` flags, e.g. "--max-delay-us 200"')  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write every run, the medians and the ratios here")
    args = ap.parse_args()
    if args.rounds < 1 or args.duration <= 0 or args.n < 1 or args.clients < 1:
        ap.error("--rounds, --n and --clients must be at least 1 and --duration above 0")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        args.obs_path = work / "obs.npy"
        np.save(args.obs_path, np.random.default_rng(0).random((4096, 54), dtype=np.float32))
        extra = shlex.split(args.server_args)
        base = None if args.baseline_args is None else shlex.split(args.baseline_args)
        procs, targets = _start_servers(work, args.clients, floor=not args.no_floor, sync_floor=args.sync_floor,
                                        tcp_floor=args.tcp_floor, tcp_lane=args.tcp_lane,
                                        server_args=extra, baseline_args=base)  # fmt: skip
        try:
            print(f"{MODEL}, onnxruntime 1 thread; {args.rounds} rounds; b1: {args.n} requests; "
                  f"tput: {args.clients} clients x {args.duration:g} s; server flags: {args.server_args or '-'}",
                  flush=True)  # fmt: skip
            q_diff = _q_check(args, targets, work)
            print(f"Q-values of a 50-step rollout agree across the {len(targets)} targets: max |diff| {q_diff:.1e}",
                  flush=True)  # fmt: skip
            runs = _measure(args, targets)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    figures = medians(runs)
    print("\n" + format_report(figures))
    if args.json:
        doc = {"runs": runs, "q_max_abs_diff": q_diff, "median": {k: vars(f) for k, f in figures.items()},
               "ratio_to_fastapi": {k: vars(f) for k, f in ratios(figures).items()}}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
