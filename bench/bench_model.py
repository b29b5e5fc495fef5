#!/usr/bin/env python3
"""Model-layer benchmark: checkpoint size and load time, and predict() overhead over the raw network.

Prints, for Hamlet's MLP (L1, obs 91) and CNN+LSTM (L2, obs 54), side by side in one run:
  - training checkpoint (v2, Hamlet's layout, replay buffer at full capacity) vs inference checkpoint
    (inference_v1): file size and median load time through HamletModel;
  - HamletModel.predict() vs the raw network forward under torch.no_grad() at batch 1 and 1024 (medians);
then issue 13's goal rows it measures (predict overhead at b1 / b1024, LSTM inference vs training load),
each beside the baseline the issue recorded and the goal.

    python bench/bench_model.py [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hamlet_runs import write_training_checkpoint
from timing import fmt_time, interleaved_medians, print_goals

from townlet.inference import HamletModel
from townlet.inference.migration import migrate_checkpoint

# issue 13's figures before the work : the "baseline" column of the goal rows
PREDICT_OVERHEAD_BASELINE = {("simple", 1): "+85..99 %", ("simple", 1024): "+15..19 %", ("recurrent", 1): "+35 %"}
PREDICT_OVERHEAD_GOAL = {1: 0.25, 1024: 0.10}  # predict over the raw forward, at most
LOAD_BASELINE, LOAD_GOAL = "3.9..4.9x", 5.0  # LSTM: inference checkpoint load this many times faster, at least


def bench_checkpoints(network_type: str, workdir: Path, repeats: int) -> tuple[HamletModel, float]:
    training = write_training_checkpoint(workdir / network_type, network_type, episode=1000)
    inference = migrate_checkpoint(training).target
    times = interleaved_medians(
        {
            "train": lambda: HamletModel.load_from_training_checkpoint(training),
            "inf": lambda: HamletModel.load_from_checkpoint(inference),
        },
        repeats,
        budget_s=0.05,
    )
    t_train, t_inf = times["train"], times["inf"]
    s_train, s_inf = training.stat().st_size, inference.stat().st_size
    print(
        f"  checkpoint size   training {s_train / 1e6:7.2f} MB | inference {s_inf / 1e6:7.2f} MB | "
        f"{s_train / s_inf:5.1f}x smaller"
    )
    print(
        f"  load (median)     training {fmt_time(t_train)} | inference {fmt_time(t_inf)} | "
        f"{t_train / t_inf:5.1f}x faster"
    )
    return HamletModel.load_from_checkpoint(inference), t_train / t_inf


def bench_predict(model: HamletModel, repeats: int) -> dict[int, float]:
    """Print predict vs the raw forward; return ``{batch: predict / forward - 1}``."""
    network = model.network
    overheads = {}
    for batch in (1, 1024):
        obs = torch.rand(batch, model.obs_dim)
        hidden = model.initial_hidden(batch) if model.is_recurrent else None

        def raw() -> object:
            with torch.no_grad():
                return network(obs, hidden)

        times = interleaved_medians(
            {
                "raw": raw,
                "pred": lambda: model.predict(obs, hidden),
                "eps": lambda: model.predict(obs, hidden, epsilon=0.1),
            },
            repeats,
        )
        t_raw, t_pred, t_eps = times["raw"], times["pred"], times["eps"]
        print(
            f"  batch {batch:5d}        raw forward {fmt_time(t_raw)} | predict {fmt_time(t_pred)} "
            f"({(t_pred / t_raw - 1) * 100:+5.1f}%) | predict eps=0.1 {fmt_time(t_eps)} "
            f"({(t_eps / t_raw - 1) * 100:+5.1f}%)"
        )
        overheads[batch] = t_pred / t_raw - 1
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats per figure (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.repeats} repeats")
    goals = []
    with tempfile.TemporaryDirectory() as tmp:
        for network_type, label in (
            ("simple", "SimpleQNetwork (L1, obs 91)"),
            ("recurrent", "RecurrentSpatialQNetwork (L2, obs 54)"),
        ):
            print(f"\n{label}")
            model, load_ratio = bench_checkpoints(network_type, Path(tmp), max(5, args.repeats // 3))
            for batch, overhead in bench_predict(model, args.repeats).items():
                limit = PREDICT_OVERHEAD_GOAL[batch]
                goals.append((
                    f"{'MLP' if network_type == 'simple' else 'LSTM'} predict over raw forward, b{batch}",
                    f"{overhead * 100:+.0f} %", PREDICT_OVERHEAD_BASELINE.get((network_type, batch), "-"),
                    f"<= +{limit * 100:.0f} %", overhead <= limit,
                ))  # fmt: skip
            if network_type == "recurrent":
                goals.append(("LSTM inference vs training checkpoint load", f"{load_ratio:.1f}x faster",
                              LOAD_BASELINE, f">= {LOAD_GOAL:.0f}x", load_ratio >= LOAD_GOAL))  # fmt: skip
    print_goals(goals)


if __name__ == "__main__":
    main()
