"""Our gRPC server vs a bare gRPC server doing no model work, on the same hamlet.v1 contract, in one run.

    python bench/bench_server.py [--duration 3] [--model lstm|mlp] [--backend auto|torch|onnx] [--streams 1,16,64,256]

Starts two server processes on loopback: the floor (bench/floor.py: a trivial aio servicer that decodes the
observations and returns cached zero Q-values) and `hamlet-server serve` on a temp repository holding the
trained demo model of `--model` (copied from models/). The benchmark process is the client (grpc.aio, one
channel). It prints, side by side: unary Predict batch 1 p50, one lock-step stream step p50 (num_envs=1),
and steps/s with N concurrent lock-step streams, plus the mean batch size our batcher formed at each N
(from its Prometheus histogram), and the raw forward at batch 1 of the backend the server runs ("compute",
in this process). It ends with issue 13's goal rows: batch-1 latency as ours / (floor + compute), at most
1.25x; 256 streams as ours / floor, at least 0.8x; then, as a diagnosis, the two latencies against a third
server, the floor running the same network inline per request (bench/floor.py --compute). The floor is
bench/floor.py (grpc.aio); ../shared/bench/goals measures the same rows against the shared floors. Server
settings default to `hamlet-server serve`'s. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import grpc
import numpy as np
from ports import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import floor as floor_module
from floor import spawn_ready
from timing import print_goals

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2

MODELS = {"lstm": ("townlet-L2-lstm", 54), "mlp": ("townlet-L1-mlp", 91)}  # the trained demo models in models/
F32 = tensor_pb2.DATA_TYPE_FLOAT32


# ---------------------------------------------------------------------------------------- client side
def _obs(dim: int, batch: int = 1) -> tensor_pb2.Tensor:
    data = np.random.default_rng(0).random((batch, dim), dtype=np.float32)
    return tensor_pb2.Tensor(shape=[batch, dim], dtype=F32, data=data.tobytes())


async def _unary_p50(stub, model: str, dim: int, duration: float) -> float:
    request = pb.PredictRequest(model=model, observations=_obs(dim))
    for _ in range(20):
        await stub.Predict(request)
    samples = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        await stub.Predict(request)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


async def _stream(stub, model: str, dim: int, stop: float, samples: list[float] | None) -> int:
    call = stub.StreamEpisode()
    await call.write(pb.StreamEpisodeRequest(start=pb.EpisodeStart(model=model, num_envs=1)))
    await call.read()
    step = pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=_obs(dim)))
    steps = 0
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        await call.write(step)
        await call.read()
        if samples is not None:
            samples.append(time.perf_counter() - t0)
        steps += 1
    await call.done_writing()
    await call.code()
    return steps


async def _streams_rate(stub, model: str, dim: int, n: int, duration: float) -> float:
    await asyncio.gather(*(_stream(stub, model, dim, time.perf_counter() + 0.3, None) for _ in range(n)))  # warm
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(_stream(stub, model, dim, t0 + duration, None) for _ in range(n)))
    return sum(counts) / (time.perf_counter() - t0)


def _batch_stats(metrics_port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    total = sum(float(v) for v in re.findall(r"^hamlet_batch_size_sum\{[^}]*\} (\S+)$", text, re.M))
    count = sum(float(v) for v in re.findall(r"^hamlet_batch_size_count\{[^}]*\} (\S+)$", text, re.M))
    return total, count


async def _measure(port: int, model: str, dim: int, args, metrics_port: int | None) -> dict[str, float]:
    out: dict[str, float] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        out["unary_p50_us"] = await _unary_p50(stub, model, dim, args.duration) * 1e6
        samples: list[float] = []
        await _stream(stub, model, dim, time.perf_counter() + 0.3, None)
        await _stream(stub, model, dim, time.perf_counter() + args.duration, samples)
        out["stream_p50_us"] = statistics.median(samples) * 1e6
        for n in args.streams:
            before = _batch_stats(metrics_port) if metrics_port else (0.0, 0.0)
            out[f"rate_{n}"] = await _streams_rate(stub, model, dim, n, args.duration)
            if metrics_port:
                after = _batch_stats(metrics_port)
                # includes the 0.3 s warm-up's batches; both phases run the same load
                out[f"batch_{n}"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    return out


def _raw_forward_us(model_path: Path, backend: str) -> float:
    """Median batch-1 forward of ``backend`` (as the server resolves it on the CPU), 1 thread."""
    import torch

    from hamlet_server.backends import load_backend, resolve_backend

    torch.set_num_threads(1)
    model = load_backend(model_path, "cpu", resolve_backend(backend, "cpu"), threads=1)
    obs = torch.rand(1, model.obs_dim)
    hidden = None
    if model.is_recurrent:
        zeros = torch.zeros(1, 1, model.hidden_dim or 0)
        hidden = (zeros, zeros.clone())
    for _ in range(20):
        model.forward(obs, hidden)
    samples = []
    for _ in range(300):
        t0 = time.perf_counter()
        model.forward(obs, hidden)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--model", choices=sorted(MODELS), default="lstm")
    parser.add_argument("--max-delay-us", type=int, default=0, help="our server's batcher delay")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto", help="our server's backend")
    parser.add_argument("--forward-thread", choices=["true", "false"], default="false", help="our server's setting")
    parser.add_argument("--inline-rows", type=int, default=1, help="our server's setting")
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256])
    args = parser.parse_args()
    name, dim = MODELS[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "models" / name, Path(tmp) / name)  # this model alone, as shipped
        metrics_port = free_port()
        ours_cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", tmp, "--port", "0",
                    "--metrics-port", str(metrics_port), "--threads", "1", "--max-delay-us", str(args.max_delay_us),
                    "--max-batch", str(args.max_batch), "--backend", args.backend,
                    "--forward-thread", args.forward_thread, "--inline-rows", str(args.inline_rows),
                    "--log-level", "WARNING"]  # fmt: skip
        served = max((Path(tmp) / name).glob("model_ep*.pt"))
        floor, floor_target = spawn_ready([sys.executable, floor_module.__file__])
        situ, situ_target = spawn_ready([sys.executable, floor_module.__file__, "--compute", str(served)], cwd=ROOT)
        ours, ours_target = spawn_ready(ours_cmd, cwd=ROOT)
        floor_port, situ_port, ours_port = (int(t.rsplit(":", 1)[1]) for t in (floor_target, situ_target, ours_target))
        try:
            raw = _raw_forward_us(served, args.backend)
            floor_r = asyncio.run(_measure(floor_port, name, dim, args, None))
            situ_r = asyncio.run(_measure(situ_port, name, dim, _latency_only(args), None))
            ours_r = asyncio.run(_measure(ours_port, name, dim, args, metrics_port))
        finally:
            for proc in (floor, situ, ours):
                proc.terminate()
                proc.wait(timeout=20)

    print(f"\nhamlet-server vs bare gRPC floor: model {name} (obs {dim}), {os.cpu_count()} CPUs, "
          f"{args.duration:g} s per figure, backend={args.backend}, forward_thread={args.forward_thread}, "
          f"max_delay_us={args.max_delay_us}, inline_rows={args.inline_rows}, "
          f"max_batch={args.max_batch}")  # fmt: skip
    print(f"raw forward at batch 1 in-process ({args.backend} backend, 1 thread): {raw:8.0f} us\n")
    print(f"{'measure':<36}{'floor':>12}{'ours':>12}{'ours/floor':>12}{'mean batch':>12}")
    rows = [("unary Predict batch 1, p50 (us)", "unary_p50_us"), ("stream step (lock-step), p50 (us)", "stream_p50_us")]
    for label, key in rows:
        print(f"{label:<36}{floor_r[key]:>12.0f}{ours_r[key]:>12.0f}{ours_r[key] / floor_r[key]:>12.2f}{'':>12}")
    for n in args.streams:
        key = f"rate_{n}"
        label = f"{n} lock-step streams (steps/s)"
        print(f"{label:<36}{floor_r[key]:>12.0f}{ours_r[key]:>12.0f}{ours_r[key] / floor_r[key]:>12.2f}"
              f"{ours_r[f'batch_{n}']:>12.1f}")  # fmt: skip
    _print_goal_rows(args, floor_r, ours_r, raw)
    print("\nDiagnosis (not a goal): the floor with the network's forward run inline per request (bench/floor.py "
          "--compute; no batching, state table, validation or metrics)")  # fmt: skip
    print(f"{'measure':<36}{'floor+net':>12}{'ours':>12}{'ours/it':>12}{'fl+compute':>12}")
    for label, key in rows:
        print(f"{label:<36}{situ_r[key]:>12.0f}{ours_r[key]:>12.0f}{ours_r[key] / situ_r[key]:>12.2f}"
              f"{floor_r[key] + raw:>12.0f}")  # fmt: skip
    return 0


def _latency_only(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` without the many-stream rates (the in-situ floor answers one request at a time)."""
    return argparse.Namespace(**{**vars(args), "streams": []})


# issue 13's figures when it was filed, per model: (Predict b1, one stream 1 env) as x (floor + compute)
_LATENCY_BASELINE = {"lstm": ("2.44-2.74x", "2.70-3.05x"), "mlp": ("1.55-1.76x", "1.70-1.94x")}
_LATENCY_GOAL, _STREAMS_GOAL, _STREAMS_BASELINE = 1.25, 0.8, "0.36-0.42x"


def _print_goal_rows(args: argparse.Namespace, floor_r: dict[str, float], ours_r: dict[str, float], raw: float) -> None:
    predict_base, stream_base = _LATENCY_BASELINE[args.model]
    rows = []
    for what, key, baseline in (("Predict batch 1", "unary_p50_us", predict_base),
                                ("one stream, 1 env", "stream_p50_us", stream_base)):  # fmt: skip
        ratio = ours_r[key] / (floor_r[key] + raw)
        rows.append((f"{what}, {args.model}: ours / (floor + compute)", f"{ratio:.2f}x", baseline,
                     f"<= {_LATENCY_GOAL}x", ratio <= _LATENCY_GOAL))  # fmt: skip
    if 256 in args.streams:
        ratio = ours_r["rate_256"] / floor_r["rate_256"]
        rows.append((f"256 lock-step streams, {args.model}: ours / floor steps/s", f"{ratio:.2f}x", _STREAMS_BASELINE,
                     f">= {_STREAMS_GOAL}x", ratio >= _STREAMS_GOAL))  # fmt: skip
    print_goals(rows)


if __name__ == "__main__":
    sys.exit(main())
