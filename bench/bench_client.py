"""What the client SDK costs: SDK vs the raw generated stub vs the bare-gRPC floor, in one run.

    .venv/bin/python bench/bench_client.py [--iters 2000] [--rounds 10]

Two servers run as subprocesses (so that they do not share the client's GIL): the real `hamlet-server`
hosting an MLP (obs 91) and a CNN+LSTM (obs 54) model, and a *floor* server: a trivial asyncio servicer on
the same hamlet.v1 contract that answers with a fixed response and does no model work. Against each, the
same calls are timed through the SDK (`HamletClient.predict`, `Episode.step`) and through the raw generated
stub (encoding the observation and decoding the Q-values by hand, as a user of the stub would). Blocks of
the variants are interleaved over several rounds; the table shows medians (and p90) per call in
microseconds and the SDK / raw ratio. The floor rows are the best the client can do over gRPC in Python;
the SDK's own overhead is the SDK / raw ratio on the floor server.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import floor
import grpc
import numpy as np
from floor import spawn_ready

from hamlet_client import HamletClient
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2


def _write_models(root: Path) -> None:
    import torch

    from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
    from townlet.inference import HamletModel, save_inference_checkpoint

    torch.manual_seed(0)
    save_inference_checkpoint(HamletModel(SimpleQNetwork(obs_dim=91, action_dim=6)), root / "mlp" / "model_ep1.pt")
    lstm = RecurrentSpatialQNetwork(action_dim=6, window_size=5, num_meters=8, num_affordance_types=14, hidden_dim=256)
    save_inference_checkpoint(HamletModel(lstm), root / "lstm" / "model_ep1.pt")


# ---------------------------------------------------------------- the raw-stub variants


def _encode(obs: np.ndarray) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(shape=obs.shape, dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=obs.tobytes())


def _decode(msg: tensor_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(msg.data, dtype="<f4").reshape(tuple(msg.shape))


def raw_predict(stub: pb_grpc.InferenceServiceStub, model: str, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    response = stub.Predict(pb.PredictRequest(model=model, observations=_encode(obs)), timeout=10.0)
    return np.array(response.actions, dtype=np.int64), _decode(response.q_values)


class RawEpisode:
    """The stream the way the generated stub is usually driven: a request queue feeding an iterator."""

    def __init__(self, stub: pb_grpc.InferenceServiceStub, model: str, num_envs: int) -> None:
        self._requests: queue.SimpleQueue[pb.StreamEpisodeRequest | None] = queue.SimpleQueue()
        self._requests.put(pb.StreamEpisodeRequest(start=pb.EpisodeStart(model=model, num_envs=num_envs)))
        self._responses = stub.StreamEpisode(iter(self._requests.get, None))
        next(self._responses)

    def step(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._requests.put(pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=_encode(obs))))
        result = next(self._responses).step
        return np.array(result.actions, dtype=np.int64), _decode(result.q_values)

    def close(self) -> None:
        self._requests.put(None)
        for _ in self._responses:
            pass


# ---------------------------------------------------------------- timing


def _time_block(fn: Callable[[], Any], iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out


def _interleaved(variants: dict[str, Callable[[], Any]], iters: int, rounds: int) -> dict[str, list[float]]:
    for fn in variants.values():  # warm up
        _time_block(fn, max(iters // 10, 20))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name] += _time_block(fn, iters // rounds)
    return samples


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def _row(label: str, sdk: list[float], raw: list[float]) -> str:
    m_sdk, m_raw = statistics.median(sdk), statistics.median(raw)
    return (
        f"{label:<38} {m_sdk:>9.1f} {_p(sdk, 90):>8.1f} {m_raw:>9.1f} {_p(raw, 90):>8.1f} "
        f"{m_sdk / m_raw:>8.3f} {m_sdk - m_raw:>+8.1f}"
    )


def _bench_target(target: str, model: str, obs_dim: int, iters: int, rounds: int) -> tuple[list[str], dict[str, Any]]:
    rng = np.random.default_rng(0)
    one = rng.random((1, obs_dim), dtype=np.float32)
    envs = rng.random((8, obs_dim), dtype=np.float32)
    rows: list[str] = []
    medians: dict[str, Any] = {}
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.InferenceServiceStub(channel)
    with HamletClient(target) as client:
        for label, obs in (("predict B=1", one), ("predict B=8", envs)):
            s = _interleaved(
                {"sdk": lambda o=obs: client.predict(o, model=model), "raw": lambda o=obs: raw_predict(stub, model, o)},
                iters,
                rounds,
            )
            rows.append(_row(label, s["sdk"], s["raw"]))
            medians[label] = (statistics.median(s["sdk"]), statistics.median(s["raw"]))
        for label, obs in (("episode step, 1 env", one), ("episode step, 8 envs", envs)):
            n = obs.shape[0]
            with client.episode(model, num_envs=n) as episode:
                raw = RawEpisode(stub, model, n)
                s = _interleaved({"sdk": lambda e=episode, o=obs: e.step(o), "raw": lambda o=obs: raw.step(o)},
                                 iters, rounds)  # fmt: skip
                raw.close()
            rows.append(_row(label, s["sdk"], s["raw"]))
            medians[label] = (statistics.median(s["sdk"]), statistics.median(s["raw"]))
    channel.close()
    return rows, medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=2000, help="timed calls per variant and case")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved blocks the calls are split into")
    args = parser.parse_args(argv)

    procs: list[subprocess.Popen[str]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _write_models(Path(tmp))
            floor_proc, floor_target = spawn_ready([sys.executable, floor.__file__])
            procs.append(floor_proc)
            flags = ["--port", "0", "--metrics-port", "0", "--poll-interval", "0", "--device", "cpu"]
            flags += ["--log-level", "WARNING"]
            cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", tmp, *flags]
            hamlet, hamlet_target = spawn_ready(cmd)
            procs.append(hamlet)

            print(f"client SDK vs raw generated stub; {args.iters} calls per cell, medians in us (sync client)")
            header = f"{'':<38} {'SDK p50':>9} {'p90':>8} {'raw p50':>9} {'p90':>8} {'SDK/raw':>8} {'+us':>8}"
            results: dict[str, dict[str, Any]] = {}
            for title, target, model, obs_dim in (
                ("floor server (no model work), obs 91", floor_target, "floor", 91),
                ("hamlet-server, MLP (obs 91)", hamlet_target, "mlp", 91),
                ("hamlet-server, CNN+LSTM (obs 54)", hamlet_target, "lstm", 54),
            ):
                rows, medians = _bench_target(target, model, obs_dim, args.iters, args.rounds)
                results[title] = medians
                print(f"\n{title}\n{header}")
                print("\n".join(rows))
            floor_medians = results["floor server (no model work), obs 91"]
            mlp_medians = results["hamlet-server, MLP (obs 91)"]
            print("\nhamlet-server MLP vs floor (SDK p50): " + ", ".join(
                f"{case} {mlp_medians[case][0] / floor_medians[case][0]:.2f}x" for case in floor_medians
            ))  # fmt: skip
            worst = max(m[0] / m[1] for res in results.values() for m in res.values())
            print(f"largest SDK/raw ratio: {worst:.3f} (target <= 1.10)")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
