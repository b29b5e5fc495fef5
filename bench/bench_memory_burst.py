"""Server memory through a burst of big Predicts: resident memory before, at the peak and after, and refusals.

    python bench/bench_memory_burst.py [--calls 32] [--mb 15] [--settle 3]

Each row starts `hamlet-server serve` on the trained L1 MLP demo model (`--max-predict-batch 65536` so that
a 15 MB request, 41,000 observations, is a valid one), warms it with a small Predict, reads its VmRSS
(before), fires `--calls` concurrent Predicts of `--mb` MB each from this process while sampling the
server's VmRSS every 10 ms (peak), waits `--settle` s after the last answer (after), and counts the calls
refused with RESOURCE_EXHAUSTED (the in-flight budget). Rows: the server as before (no budget in effect,
no trim), the same with glibc's MALLOC_ARENA_MAX=2, the defaults (a 256 MiB budget, malloc_trim after
64 MiB and a 1 s pause), a tight budget (64 MiB), and before / the defaults with the forwards on a worker
thread (the loop keeps taking requests meanwhile, so they overlap). Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from floor import spawn_ready

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2

MODEL, OBS_DIM = "townlet-L1-mlp", 91


def _rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


class _PeakSampler(threading.Thread):
    """The highest VmRSS of `pid` while running, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _rss_mb(self.pid))
            time.sleep(0.01)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak, _rss_mb(self.pid))


def _request(rows: int, seed: int = 0) -> pb.PredictRequest:
    obs = np.random.default_rng(seed).random((rows, OBS_DIM), dtype=np.float32)
    tensor = tensor_pb2.Tensor(shape=[rows, OBS_DIM], dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=obs.tobytes())
    return pb.PredictRequest(model=MODEL, observations=tensor)


async def _burst(target: str, calls: int, rows: int) -> tuple[int, int, int]:
    """(answered, refused by the budget, other errors) of `calls` concurrent Predicts of `rows` rows."""
    request = _request(rows)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        results = await asyncio.gather(*(stub.Predict(request, timeout=120) for _ in range(calls)),
                                       return_exceptions=True)  # fmt: skip
    refused = sum(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                  for r in results)  # fmt: skip
    failed = sum(isinstance(r, BaseException) for r in results) - refused
    return len(results) - refused - failed, refused, failed


async def _warm(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await pb_grpc.InferenceServiceStub(channel).Predict(_request(4))


def _row(models: str, flags: list[str], env: dict[str, str], args: argparse.Namespace) -> tuple[float, ...]:
    cmd = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", models, "--port", "0",
           "--metrics-port", "0", "--backend", "torch", "--max-predict-batch", "65536", "--max-message-mb", "16",
           "--log-level", "WARNING", *flags]  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        server, target = spawn_ready(cmd, cwd=ROOT)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert isinstance(server, subprocess.Popen)
    try:
        asyncio.run(_warm(target))
        time.sleep(1.0)
        before = _rss_mb(server.pid)
        sampler = _PeakSampler(server.pid)
        sampler.start()
        rows = int(args.mb * 1e6) // (OBS_DIM * 4)
        answered, refused, failed = asyncio.run(_burst(target, args.calls, rows))
        time.sleep(args.settle)
        peak = sampler.stop()
        after = _rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return before, peak, after, answered, refused, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=32, help="concurrent Predicts in the burst")
    parser.add_argument("--mb", type=float, default=15.0, help="MB of observations per Predict")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the burst before 'after'")
    args = parser.parse_args()
    before = ["--max-inflight-mb", "100000", "--trim-after-mb", "0"]
    rows = [
        ("as before: no budget, no trim", before, {}),
        ("as before, MALLOC_ARENA_MAX=2", before, {"MALLOC_ARENA_MAX": "2"}),
        ("defaults (256 MiB, trim after 64)", [], {}),
        ("--max-inflight-mb 64", ["--max-inflight-mb", "64"], {}),
        ("as before, --forward-thread true", [*before, "--forward-thread", "true"], {}),
        ("defaults, --forward-thread true", ["--forward-thread", "true"], {}),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "models" / MODEL, Path(tmp) / MODEL)
        print(f"\nserver VmRSS through {args.calls} concurrent {args.mb:g} MB Predicts ({MODEL}), "
              f"{os.cpu_count()} CPUs; 'after' is {args.settle:g} s after the last answer")  # fmt: skip
        print(f"{'server':<36}{'before MB':>11}{'peak MB':>10}{'after MB':>10}{'answered':>10}{'refused':>9}"
              f"{'failed':>8}")  # fmt: skip
        for label, flags, env in rows:
            rss_before, peak, after, answered, refused, failed = _row(tmp, flags, env, args)
            print(f"{label:<36}{rss_before:>11.0f}{peak:>10.0f}{after:>10.0f}{answered:>10}{refused:>9}{failed:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
