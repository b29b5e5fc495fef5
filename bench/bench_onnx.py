#!/usr/bin/env python3
"""ONNX Runtime vs PyTorch eager: per-call latency of Hamlet's two networks, side by side in one run.

For the MLP (L1, obs 91) and the CNN+LSTM (L2, obs 54) at batch 1, 32 and 1024, prints the median latency of
  - forward: the raw network under torch.no_grad() vs onnxruntime's session.run (1 thread each);
  - predict: HamletModel.predict() vs OnnxModel.predict() (validation + greedy actions included),
and the ratio torch / onnxruntime (> 1 means onnxruntime is faster). Targets: the forward >= 2x at batch 1, and
issue 13's goal row: the onnxruntime predictor >= 4x the torch eager predictor at batch 1 for both networks,
printed beside the baseline the issue recorded.

    python bench/bench_onnx.py [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hamlet_runs import make_network
from timing import fmt_time, interleaved_medians, print_goals

from townlet.inference.model import HamletModel
from townlet.inference.onnx_export import export_to_onnx
from townlet.inference.onnx_runtime import OnnxModel

BATCHES = (1, 32, 1024)
PREDICT_GOAL = 4.0  # issue 13: OnnxModel.predict at least this many times faster than HamletModel.predict, b1
PREDICT_BASELINE = {"simple": "1.8x", "recurrent": "3.0x"}  # issue 13's figures before the work


def bench_network(network_type: str, workdir: Path, repeats: int, threads: int) -> dict[str, float]:
    """Export one network and print its table; returns the batch-1 ratios ``{"forward": .., "predict": ..}``."""
    model = HamletModel(make_network(network_type, seed=0))
    onnx_model = OnnxModel(export_to_onnx(model, workdir / f"{network_type}.onnx"), num_threads=threads)
    print(f"\n{network_type} network ({model.num_parameters:,} params, obs {model.obs_dim}), ORT {ort.__version__}")
    print(f"  {'batch':>5}  {'call':<8} {'torch eager':>11}   {'onnxruntime':>11}   torch/ORT")
    by_batch = [bench_batch(model, onnx_model, batch, repeats) for batch in BATCHES]
    return by_batch[0]


def bench_batch(model: HamletModel, onnx_model: OnnxModel, batch: int, repeats: int) -> dict[str, float]:
    """Print the forward and predict rows of one batch size; return their ratios torch / ORT."""
    obs = np.random.default_rng(batch).random((batch, model.obs_dim), dtype=np.float32)
    obs_t = torch.from_numpy(obs)
    hidden_t = model.initial_hidden(batch) if model.is_recurrent else None
    hidden_np = onnx_model.initial_hidden(batch) if onnx_model.is_recurrent else None
    rows = {
        "forward": (lambda: model.forward(obs_t, hidden_t), lambda: onnx_model.forward(obs, hidden_np)),
        "predict": (lambda: model.predict(obs_t, hidden_t), lambda: onnx_model.predict(obs, hidden_np)),
    }
    ratios = {}
    for call, (torch_fn, ort_fn) in rows.items():
        times = interleaved_medians({"torch": torch_fn, "ort": ort_fn}, repeats)
        t_torch, t_ort = times["torch"], times["ort"]
        print(f"  {batch:>5}  {call:<8} {fmt_time(t_torch)}   {fmt_time(t_ort)}   {t_torch / t_ort:6.2f}x")
        ratios[call] = t_torch / t_ort
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="samples per median (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} ({args.threads} thread), onnxruntime {ort.__version__} ({args.threads} thread)")
    with tempfile.TemporaryDirectory() as scratch:
        ratios = {kind: bench_network(kind, Path(scratch), args.repeats, args.threads) for kind in PREDICT_BASELINE}
    forward = [r["forward"] for r in ratios.values()]
    verdict = "met" if min(forward) >= 2.0 else "NOT met"
    print(
        f"\ntarget onnxruntime >= 2x faster than eager forward at batch 1: {verdict} "
        f"(simple {forward[0]:.2f}x, recurrent {forward[1]:.2f}x)"
    )
    print_goals([
        (f"{'MLP' if kind == 'simple' else 'LSTM'} OnnxModel.predict vs HamletModel.predict, b1 "
         f"(forwards alone {r['forward']:.1f}x)", f"{r['predict']:.2f}x", PREDICT_BASELINE[kind],
         f">= {PREDICT_GOAL:.0f}x", r["predict"] >= PREDICT_GOAL)
        for kind, r in ratios.items()
    ])  # fmt: skip


if __name__ == "__main__":
    main()
