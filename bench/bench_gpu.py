#!/usr/bin/env python3
"""Agent-steps/s of the L2 CNN+LSTM inside one process at large batch: eager, and a CUDA graph on a GPU.

    python bench/bench_gpu.py [--device auto|cpu|cuda] [--batches 1024,4096,16384,65536] [--repeats 20]

One "agent step" is one row of one recurrent step (observation + (h, c) in, Q-values + (h, c) out), the work
the server's batcher does per environment per step. The hidden state stays on the device between steps, as
in the server's `HiddenStateTable`; observations are copied from host memory each step (pinned on CUDA), and
the Q-values are copied back, as the server must. Rows printed per batch size, side by side:

  - eager: `HamletModel.forward` under inference mode;
  - cuda graph (CUDA only): the same step captured once at that static batch size and replayed;
  - the same eager step on the CPU with 1 thread at the smallest batch, as the baseline a GPU must beat.

Issue 13's goal for the in-process row is >= 1M agent-steps/s at large batch on a GPU. On a machine without
CUDA the script still runs (the CPU rows only), so it can be checked anywhere before a device is lent.
Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_demo_models import demo_networks

from townlet.inference import HamletModel

GOAL = 1_000_000  # agent-steps/s, LSTM, large batch, in process (issue 13)
OBS_DIM = 54


def _time(step: Callable[[], None], repeats: int, sync: Callable[[], None]) -> float:
    """Median seconds per call over ``repeats`` samples of a few calls each."""
    for _ in range(3):
        step()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            step()
        sync()
        samples.append((time.perf_counter() - start) / 5)
    return statistics.median(samples)


def _eager(model: HamletModel, batch: int, device: torch.device) -> Callable[[], None]:
    pin = device.type == "cuda"
    host_obs = torch.rand(batch, OBS_DIM, pin_memory=pin)
    host_q = torch.empty(batch, model.action_dim, pin_memory=pin)
    state = model.initial_hidden(batch)

    def step() -> None:
        nonlocal state
        with torch.inference_mode():
            q, state = model.forward(host_obs.to(device, non_blocking=True), state)
            host_q.copy_(q, non_blocking=True)

    return step


def _graph(model: HamletModel, batch: int, device: torch.device) -> Callable[[], None]:
    """One recurrent step captured as a CUDA graph at a static batch; (h, c) updated in place."""
    host_obs = torch.rand(batch, OBS_DIM, pin_memory=True)
    host_q = torch.empty(batch, model.action_dim, pin_memory=True)
    obs = torch.zeros(batch, OBS_DIM, device=device)
    h, c = model.initial_hidden(batch)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up on a side stream, as capture requires
            model.forward(obs, (h, c))
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        q, (h2, c2) = model.forward(obs, (h, c))
        h.copy_(h2)
        c.copy_(c2)

    def step() -> None:
        obs.copy_(host_obs, non_blocking=True)
        graph.replay()
        host_q.copy_(q, non_blocking=True)

    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:N]")
    ap.add_argument("--batches", default="1024,4096,16384,65536", help="batch sizes, comma separated")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else a.device.replace("auto", "cpu")
    )
    batches = [int(b) for b in a.batches.split(",")]
    network = demo_networks()["untrained-lstm-L2"]  # timing depends on the shapes only, not on the weights
    torch.set_num_threads(1)
    cpu_model = HamletModel(network, metadata={}).to("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 torch thread"
    print(f"L2 CNN+LSTM (636,486 parameters), device {device} ({name}), torch {torch.__version__}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    baseline_batch = batches[0]
    cpu_s = _time(_eager(cpu_model, baseline_batch, torch.device("cpu")), max(3, a.repeats // 4), lambda: None)
    cpu_rate = baseline_batch / cpu_s
    print(f"baseline: CPU eager, batch {baseline_batch}: {cpu_s * 1e3:.2f} ms per step = {cpu_rate:,.0f} agent-steps/s")
    print(f"\n{'batch':>7s} {'eager ms':>9s} {'eager steps/s':>14s} {'graph ms':>9s} {'graph steps/s':>14s} "
          f"{'best / CPU':>10s} {'goal':>10s}")  # fmt: skip
    model = HamletModel(network, metadata={}).to(device)
    for batch in batches:
        eager_s = _time(_eager(model, batch, device), a.repeats, sync)
        graph_s = _time(_graph(model, batch, device), a.repeats, sync) if device.type == "cuda" else None
        best = batch / min(eager_s, graph_s or eager_s)
        graph = f"{graph_s * 1e3:9.2f} {batch / graph_s:14,.0f}" if graph_s else f"{'-':>9s} {'-':>14s}"
        print(f"{batch:7d} {eager_s * 1e3:9.2f} {batch / eager_s:14,.0f} {graph} {best / cpu_rate:9.1f}x "
              f"{'met' if best >= GOAL else 'not met':>10s}")  # fmt: skip
    print(f"\ngoal: >= {GOAL:,} agent-steps/s in process at large batch (issue 13)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
