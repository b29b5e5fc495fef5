"""Does `--workers N` (N server processes on one port, SO_REUSEPORT) beat one process? Measured beside the floor.

    python bench/bench_workers.py [--workers 2] [--streams 256] [--channels 16] [--duration 6] [--rounds 3]

Starts, on loopback: the bare-gRPC floor (bench/floor.py, one process, no model work), `hamlet-server serve`
as one process, and `hamlet-server serve --workers N`, all on the shipped demo models (models/, default
backend). This process is the client (hamlet-bench's driver: grpc.aio, `--channels` separate TCP connections
so that the kernel can spread them over the workers). Each round drives every server in turn (the order
alternates) with the same lock-step load of `--streams` streams x 1 env of the L2 LSTM; it prints steps/s,
step p50 and the mean server batch per round, then medians and the ratios to the floor and to one process.
The client shares the machine's cores with the servers: on a box with fewer cores than workers + 1 the
workers only take turns on the same cores. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from floor import spawn_ready
from ports import free_port, free_ports

from hamlet_client.loadtest.driver import LoadSpec, RunFigures, run_load

MODEL, OBS_DIM = "townlet-L2-lstm", 54


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="processes of the multi-process server (default 2)")
    ap.add_argument("--streams", type=int, default=256, help="lock-step streams of 1 env (default 256)")
    ap.add_argument("--channels", type=int, default=16, help="TCP connections the client opens (default 16)")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds measured per run (default 6)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the three servers (default 3)")
    ap.add_argument("--models", default=str(ROOT / "models"), help="model repository (default models/)")
    a = ap.parse_args()
    print(f"cores: {os.cpu_count()}; load: {a.streams} lock-step streams x 1 env of {MODEL} over {a.channels} "
          f"connections; {a.rounds} rounds of {a.duration:.0f} s", flush=True)  # fmt: skip
    serve = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", a.models, "--port", "0",
             "--poll-interval", "0", "--log-level", "WARNING"]  # fmt: skip
    one_metrics, many_metrics = free_port(), free_ports(a.workers)
    procs = []
    with tempfile.TemporaryDirectory():
        try:
            floor, floor_target = spawn_ready([sys.executable, str(ROOT / "bench" / "floor.py")])
            procs.append(floor)
            one, one_target = spawn_ready([*serve, "--metrics-port", str(one_metrics)])
            procs.append(one)
            many, many_target = spawn_ready([*serve, "--metrics-port", str(many_metrics), "--workers", str(a.workers)])
            procs.append(many)
            servers = {
                "floor (1 process)": (floor_target, []),
                "hamlet, 1 process": (one_target, [f"http://127.0.0.1:{one_metrics}/metrics"]),
                f"hamlet, --workers {a.workers}": (
                    many_target,
                    [f"http://127.0.0.1:{many_metrics + i}/metrics" for i in range(a.workers)],
                ),
            }
            results: dict[str, list[RunFigures]] = {name: [] for name in servers}
            spec = LoadSpec(streams=a.streams, envs=1, obs_dim=OBS_DIM, duration=a.duration, warmup=1.5,
                            model=MODEL, channels=a.channels, episode_steps=0)  # fmt: skip
            for round_index in range(a.rounds):
                names = list(servers) if round_index % 2 == 0 else list(servers)[::-1]
                for name in names:
                    target, urls = servers[name]
                    figures = asyncio.run(run_load(spec, [target], label=name, metrics_urls=urls))
                    results[name].append(figures)
                    batch = f", mean batch {figures.mean_server_batch:.1f}" if figures.mean_server_batch else ""
                    print(f"round {round_index + 1} {name:24s} {figures.steps_per_s:9,.0f} steps/s, p50 "
                          f"{figures.step_latency.p50_us / 1e3:6.2f} ms, errors {sum(figures.errors.values())}"
                          f"{batch}", flush=True)  # fmt: skip
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    rates = {name: statistics.median(f.steps_per_s for f in runs) for name, runs in results.items()}
    p50s = {name: statistics.median(f.step_latency.p50_us for f in runs) / 1e3 for name, runs in results.items()}
    floor_rate, one_rate = rates["floor (1 process)"], rates["hamlet, 1 process"]
    print(f"\n{'medians':24s} {'steps/s':>9s} {'p50 ms':>7s} {'x floor':>8s} {'x 1 process':>12s}")
    for name in servers:
        print(f"{name:24s} {rates[name]:9,.0f} {p50s[name]:7.2f} {rates[name] / floor_rate:8.2f} "
              f"{rates[name] / one_rate:12.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
