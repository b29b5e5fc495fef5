"""What the Open Inference Protocol v2 costs: tritonclient's ModelInfer vs HamletClient.predict, one server.

    .venv/bin/python bench/bench_open_inference.py [--iters 1000] [--rounds 5]

One `hamlet-server serve --open-inference true` runs as a subprocess on the trained demo models (models/).
The same observations go through the SDK (hamlet.v1 Predict: the baseline) and through the real tritonclient
(`inference.GRPCInferenceService/ModelInfer`, answered by the same Predict code), in interleaved blocks; the
table shows the median and p90 microseconds per call and the v2 / SDK ratio. Needs `pip install tritonclient`
(the dev extra has it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from floor import spawn_ready

from hamlet_client import HamletClient

ROOT = Path(__file__).resolve().parents[1]


def _timed(call: Callable[[], Any], iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1e6)
    return times


def _v2_call(client: Any, model: str, obs: np.ndarray) -> Callable[[], Any]:
    import tritonclient.grpc as triton

    tensor = triton.InferInput("observations", list(obs.shape), "FP32")
    tensor.set_data_from_numpy(obs)
    return lambda: client.infer(model, [tensor]).as_numpy("q_values")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=1000, help="timed calls per variant and case")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved blocks the calls are split into")
    args = parser.parse_args(argv)
    import tritonclient.grpc as triton

    flags = ["--port", "0", "--metrics-port", "0", "--poll-interval", "0", "--device", "cpu", "--log-level", "WARNING"]
    cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", str(ROOT / "models"),
           "--open-inference", "true", *flags]  # fmt: skip
    proc, target = spawn_ready(cmd, cwd=ROOT)
    try:
        sdk, v2 = HamletClient(target), triton.InferenceServerClient(target)
        rng = np.random.default_rng(0)
        print(f"ModelInfer (tritonclient) vs Predict (HamletClient) on one server; {args.iters} calls per cell, us")
        print(f"{'':<34} {'SDK p50':>9} {'p90':>8} {'v2 p50':>9} {'p90':>8} {'v2/SDK':>7}")
        for model, obs_dim, batch in (("townlet-L1-mlp", 91, 1), ("townlet-L1-mlp", 91, 32),
                                      ("townlet-L2-lstm", 54, 1)):  # fmt: skip
            obs = rng.random((batch, obs_dim), dtype=np.float32)
            calls = {"sdk": lambda o=obs, m=model: sdk.predict(o, model=m).q_values, "v2": _v2_call(v2, model, obs)}
            for call in calls.values():
                _timed(call, 50)  # warm-up
            times: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    times[name] += _timed(call, args.iters // args.rounds)
            p50 = {name: statistics.median(t) for name, t in times.items()}
            p90 = {name: float(np.percentile(t, 90)) for name, t in times.items()}
            title = f"{model}, batch {batch}"
            print(f"{title:<34} {p50['sdk']:>9.0f} {p90['sdk']:>8.0f} {p50['v2']:>9.0f} {p90['v2']:>8.0f} "
                  f"{p50['v2'] / p50['sdk']:>7.2f}")  # fmt: skip
        sdk.close()
        v2.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
