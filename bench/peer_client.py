"""The one client of bench_peers.py: batch-1 latency, lock-step throughput and a Q rollout of one target.

    python bench/peer_client.py latency TARGET --obs OBS.npy [--warmup 200] [--n 1000]
    python bench/peer_client.py tput TARGET --obs OBS.npy [--clients 64] [--warmup 1] [--duration 3]
    python bench/peer_client.py rollout TARGET --obs OBS.npy [--steps 50] --out Q.npy

TARGET is ``hamlet-stream@HOST:PORT`` (``StreamEpisode``, 1 env, LSTM state on the server), ``hamlet-predict@
HOST:PORT`` (unary ``Predict``, (h, c) sent and returned), ``http@HOST:PORT`` (the FastAPI peer's raw float32
``POST /step``, (h, c) in the body) or ``tcp@HOST:PORT`` (the same body in length-prefixed frames to
``bench/floor_tcp.py``; one connection per client), or ``lane-stream@`` / ``lane-predict@HOST:PORT`` (the
same hamlet.v1 messages as the two Hamlet targets, in tagged frames to ``bench/lane_tcp.py``: our servicer
without gRPC).
The stateless targets feed the returned state into the next step. A port
of ``../shared/bench/peers/peerbench.py`` (same messages, same loops) so that this repository's bench measures
what the shared harness measures; each run prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import queue
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2

__all__ = ["FRAME", "KINDS", "parse_target", "read_frame"]

KINDS = ("hamlet-stream", "hamlet-predict", "http", "tcp", "lane-stream", "lane-predict")
MODEL, HIDDEN, ACTIONS = "townlet-L2-lstm", 256, 6
_F32 = tensor_pb2.DATA_TYPE_FLOAT32
FRAME = struct.Struct("<I")  # tcp@: each request and answer is a 4-byte little-endian length, then the bytes
_LANE_TAG = {"lane-stream": b"S", "lane-predict": b"P"}  # lane@: the length counts a tag byte, then the message
_FRAMED = ("tcp", *_LANE_TAG)  # the kinds that speak FRAME over a plain socket, one connection per client
_START = pb.StreamEpisodeRequest(start=pb.EpisodeStart(model=MODEL, num_envs=1))


def parse_target(target: str) -> tuple[str, str]:
    """``KIND@HOST:PORT`` -> ``(kind, "HOST:PORT")``; a ValueError says which kinds exist."""
    kind, _, addr = target.partition("@")
    if kind not in KINDS or not addr:
        raise ValueError(f"expected a target KIND@HOST:PORT with KIND one of {', '.join(KINDS)}, got {target!r}")
    return kind, addr


def _tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(shape=list(array.shape), dtype=_F32, data=array.tobytes())


def _array(tensor: tensor_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


def _predict_request(obs: np.ndarray, h: np.ndarray, c: np.ndarray) -> pb.PredictRequest:
    """obs ``[1, obs_dim]``, h/c ``[1, H]`` -> a Predict carrying the state as ``[1, 1, H]``."""
    return pb.PredictRequest(
        model=MODEL, observations=_tensor(obs), hidden=tensor_pb2.HiddenState(h=_tensor(h[None]), c=_tensor(c[None]))
    )


def read_frame(sock: socket.socket) -> bytes:
    """One length-prefixed frame from a blocking socket (tcp@)."""
    head = _read_exactly(sock, FRAME.size)
    return _read_exactly(sock, FRAME.unpack(head)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    parts, left = [], size
    while left:
        part = sock.recv(left)
        if not part:
            raise ConnectionError(f"the framed-TCP server closed the connection with {left} of {size} bytes unread")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _frame(body: bytes) -> bytes:
    return FRAME.pack(len(body)) + body


def _lane_frame(kind: str, message: Any) -> bytes:
    return _frame(_LANE_TAG[kind] + message.SerializeToString())


def _lane_answer(kind: str, frame: bytes) -> Any:
    """A lane's answer frame (tag + message) -> the StreamEpisodeResponse or PredictResponse; an ``E`` frame
    (the call ended with a status) raises with its code and message."""
    if frame[:1] == b"E":
        raise RuntimeError(f"the lane answered status {frame[1]}: {frame[2:].decode(errors='replace')}")
    answer_type = pb.StreamEpisodeResponse if kind == "lane-stream" else pb.PredictResponse
    return answer_type.FromString(frame[1:])


def _split_raw(body: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The peer's answer -> q ``[1, A]``, h ``[1, H]``, c ``[1, H]``."""
    flat = np.frombuffer(body, dtype="<f4")
    return flat[:ACTIONS][None], flat[ACTIONS : ACTIONS + HIDDEN][None], flat[ACTIONS + HIDDEN :][None]


# ---------------------------------------------------------------- one request at a time
class _SyncStepper:
    """Steps one environment through one target; ``reset`` starts a new episode (zero state)."""

    def __init__(self, kind: str, addr: str) -> None:
        self.kind = kind
        self._h = self._c = np.zeros((1, HIDDEN), np.float32)
        if kind == "http" or kind in _FRAMED:
            host, port = addr.rsplit(":", 1)
            if kind == "http":
                self._conn = http.client.HTTPConnection(host, int(port))
            else:
                self._sock = socket.create_connection((host, int(port)))
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if kind == "lane-stream":
                self._sock.sendall(_lane_frame(kind, _START))
                if not _lane_answer(kind, read_frame(self._sock)).HasField("started"):
                    raise RuntimeError(f"{addr}: the lane did not answer its EpisodeStart with EpisodeStarted")
            self._reset_next = False
            return
        self._channel = grpc.insecure_channel(addr)
        self._stub = pb_grpc.InferenceServiceStub(self._channel)
        if kind == "hamlet-stream":
            self._requests: queue.SimpleQueue[pb.StreamEpisodeRequest | None] = queue.SimpleQueue()
            self._requests.put(_START)
            self._responses: Iterator[pb.StreamEpisodeResponse] = self._stub.StreamEpisode(
                iter(self._requests.get, None)
            )
            if not next(self._responses).HasField("started"):
                raise RuntimeError(f"{addr}: the stream did not answer its EpisodeStart with EpisodeStarted")
        self._reset_next = False

    def reset(self) -> None:
        self._h = self._c = np.zeros((1, HIDDEN), np.float32)
        self._reset_next = True

    def step(self, obs: np.ndarray) -> np.ndarray:
        """obs ``[1, obs_dim]`` -> Q-values ``[1, A]``."""
        if self.kind in ("hamlet-stream", "lane-stream"):
            step = pb.EpisodeStep(observations=_tensor(obs), reset=[True] if self._reset_next else [])
            self._reset_next = False
            if self.kind == "lane-stream":
                self._sock.sendall(_lane_frame(self.kind, pb.StreamEpisodeRequest(step=step)))
                return _array(_lane_answer(self.kind, read_frame(self._sock)).step.q_values)
            self._requests.put(pb.StreamEpisodeRequest(step=step))
            return _array(next(self._responses).step.q_values)
        if self.kind in ("hamlet-predict", "lane-predict"):
            request = _predict_request(obs, self._h, self._c)
            if self.kind == "lane-predict":
                self._sock.sendall(_lane_frame(self.kind, request))
                answer = _lane_answer(self.kind, read_frame(self._sock))
            else:
                answer = self._stub.Predict(request, timeout=30)
            self._h, self._c = _array(answer.hidden.h)[0], _array(answer.hidden.c)[0]
            return _array(answer.q_values)
        body = obs.tobytes() + self._h.tobytes() + self._c.tobytes()
        if self.kind == "tcp":
            self._sock.sendall(_frame(body))
            q, self._h, self._c = _split_raw(read_frame(self._sock))
            return q
        self._conn.request("POST", "/step", body=body, headers={"Content-Type": "application/octet-stream"})
        q, self._h, self._c = _split_raw(self._conn.getresponse().read())
        return q

    def close(self) -> None:
        if self.kind == "http" or self.kind in _FRAMED:
            (self._conn if self.kind == "http" else self._sock).close()
            return
        if self.kind == "hamlet-stream":
            self._requests.put(None)
            for _ in self._responses:
                pass
        self._channel.close()


def measure_latency(target: str, obs_set: np.ndarray, warmup: int, n: int, episode: int = 200) -> dict[str, Any]:
    """p50/p90/p99 (us) of ``n`` steps after ``warmup``, one at a time, a new episode every ``episode`` steps."""
    stepper = _SyncStepper(*parse_target(target))
    times = []
    for k in range(warmup + n):
        if k % episode == 0:
            stepper.reset()
        obs = obs_set[k % len(obs_set) : k % len(obs_set) + 1]
        start = time.perf_counter()
        stepper.step(obs)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    stepper.close()
    us = np.asarray(times) * 1e6
    return {"mode": "latency", "target": target, "n": n, "p50_us": float(np.percentile(us, 50)),
            "p90_us": float(np.percentile(us, 90)), "p99_us": float(np.percentile(us, 99))}  # fmt: skip


def rollout(target: str, obs_set: np.ndarray, steps: int) -> np.ndarray:
    """Q-values ``[steps, A]`` of one episode from zero state over the first ``steps`` observations."""
    stepper = _SyncStepper(*parse_target(target))
    stepper.reset()
    q = np.concatenate([stepper.step(obs_set[k : k + 1]) for k in range(steps)])
    stepper.close()
    return q


# ---------------------------------------------------------------- C clients in lock step
async def _client_loop(kind: str, conn: Any, obs_set: np.ndarray, offset: int, stop: asyncio.Event,
                       on_step: Callable[[float, float], None]) -> None:  # fmt: skip
    """One single-env client stepping as soon as it is answered, until ``stop``; ``conn`` is the shared gRPC stub,
    or the HTTP session and URL."""
    n, i = len(obs_set), offset
    h = c = np.zeros((1, HIDDEN), np.float32)
    if kind == "hamlet-stream":
        call = conn.StreamEpisode()
        await call.write(_START)
        await call.read()
    elif kind in _FRAMED:
        host, port = conn.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        if kind == "lane-stream":
            writer.write(_lane_frame(kind, _START))
            _lane_answer(kind, await _read_frame_async(reader))
    while not stop.is_set():
        obs, start = obs_set[i % n : i % n + 1], time.perf_counter()
        if kind == "hamlet-stream":
            await call.write(pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=_tensor(obs))))
            answer = await call.read()
            if answer is grpc.aio.EOF or not answer.HasField("step"):
                raise RuntimeError(f"the stream ended or answered {answer!r} instead of a step")
        elif kind == "hamlet-predict":
            answer = await conn.Predict(_predict_request(obs, h, c), timeout=60)
            h, c = _array(answer.hidden.h)[0], _array(answer.hidden.c)[0]
        elif kind == "tcp":
            body = obs.tobytes() + h.tobytes() + c.tobytes()
            writer.write(_frame(body))
            _, h, c = _split_raw(await _read_frame_async(reader))
        elif kind == "lane-stream":
            writer.write(_lane_frame(kind, pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=_tensor(obs)))))
            if not _lane_answer(kind, await _read_frame_async(reader)).HasField("step"):
                raise RuntimeError("the lane's stream answered something other than a step")
        elif kind == "lane-predict":
            writer.write(_lane_frame(kind, _predict_request(obs, h, c)))
            answer = _lane_answer(kind, await _read_frame_async(reader))
            h, c = _array(answer.hidden.h)[0], _array(answer.hidden.c)[0]
        else:
            body = obs.tobytes() + h.tobytes() + c.tobytes()
            async with conn[0].post(conn[1], data=body, headers={"Content-Type": "application/octet-stream"}) as r:
                _, h, c = _split_raw(await r.read())
        on_step(start, time.perf_counter())
        i += 1
    if kind == "hamlet-stream":
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    elif kind in _FRAMED:
        writer.close()


async def _read_frame_async(reader: asyncio.StreamReader) -> bytes:
    (length,) = FRAME.unpack(await reader.readexactly(FRAME.size))
    return await reader.readexactly(length)


async def measure_tput(
    target: str, obs_set: np.ndarray, clients: int, warmup: float, duration: float
) -> dict[str, Any]:
    """Steps/s of ``clients`` lock-step clients over one connection, counted in a ``duration`` s window."""
    kind, addr = parse_target(target)
    stop, window, times = asyncio.Event(), [0.0, 0.0], []

    def on_step(start: float, end: float) -> None:
        if window[0] <= start and end <= window[1]:
            times.append(end - start)

    if kind == "http":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 8))
        conn: Any = (session, f"http://{addr}/step")
    elif kind in _FRAMED:
        conn = addr  # each client opens its own connection
    else:
        channel = grpc.aio.insecure_channel(addr)
        conn = pb_grpc.InferenceServiceStub(channel)
    now = time.perf_counter()
    window[:] = [now + warmup, now + warmup + duration]
    tasks = [asyncio.create_task(_client_loop(kind, conn, obs_set, 97 * j, stop, on_step)) for j in range(clients)]
    await asyncio.sleep(warmup)
    cpu = time.process_time()
    await asyncio.sleep(duration)
    cpu = time.process_time() - cpu
    stop.set()
    await asyncio.gather(*tasks)
    if kind == "http":
        await session.close()
    elif kind in ("hamlet-stream", "hamlet-predict"):
        await channel.close()
    us = np.asarray(times) * 1e6
    p50 = float(np.percentile(us, 50)) if len(us) else None
    return {"mode": "tput", "target": target, "clients": clients, "steps_per_s": len(times) / duration,
            "p50_us": p50, "client_cpu_cores": cpu / duration}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["latency", "tput", "rollout"])
    parser.add_argument("target", help="KIND@HOST:PORT, KIND one of " + ", ".join(KINDS))
    parser.add_argument("--obs", required=True, help=".npy float32 [N, obs_dim]: the fixed observations")
    parser.add_argument("--warmup", type=float, default=None, help="latency: requests (200); tput: seconds (1)")
    parser.add_argument("--n", type=int, default=1000, help="latency: requests measured (default 1000)")
    parser.add_argument("--clients", type=int, default=64, help="tput: lock-step clients (default 64)")
    parser.add_argument("--duration", type=float, default=3.0, help="tput: seconds measured (default 3)")
    parser.add_argument("--steps", type=int, default=50, help="rollout: steps (default 50)")
    parser.add_argument("--out", help="rollout: .npy for the Q-values [steps, A]")
    args = parser.parse_args()
    parse_target(args.target)
    obs_set = np.load(args.obs).astype(np.float32)
    if args.mode == "latency":
        result = measure_latency(args.target, obs_set, int(args.warmup if args.warmup is not None else 200), args.n)
    elif args.mode == "tput":
        warmup = args.warmup if args.warmup is not None else 1.0
        result = asyncio.run(measure_tput(args.target, obs_set, args.clients, warmup, args.duration))
    else:
        q = rollout(args.target, obs_set, args.steps)
        if args.out:
            np.save(args.out, q)
        result = {"mode": "rollout", "target": args.target, "steps": args.steps, "out": args.out}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
