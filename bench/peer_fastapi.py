"""The FastAPI peer of issue 25: a plain FastAPI + uvicorn endpoint serving a recurrent model's ONNX export.

    python bench/peer_fastapi.py --onnx L2.onnx [--port 0]

Stateless, as the peers of ``../shared/bench/peers`` are (this is their ``serve_fastapi.py`` in one file):
``POST /step`` takes raw little-endian float32 bytes, obs ``[B, obs_dim]`` then h ``[B, H]`` then c ``[B, H]``,
and answers q ``[B, A]`` then the new h ``[B, H]`` and c ``[B, H]``. The session runs in onnxruntime with one
thread and the options of Hamlet's ONNX backend. Prints ``READY 127.0.0.1:PORT`` once it listens (port 0 picks
a free one), so ``bench/floor.py``'s ``spawn_ready`` can start it.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request, Response

__all__ = ["RawStepModel", "build_app", "main"]

_OUTPUTS = ["q_values", "new_hidden_h", "new_hidden_c"]


class RawStepModel:
    """One onnxruntime session of a recurrent export, stepped on raw float32 bytes."""

    def __init__(self, onnx_path: Path) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        if set(inputs) != {"obs", "hidden_h", "hidden_c"}:
            raise ValueError(
                f"{onnx_path}: expected a recurrent Hamlet export with inputs obs, hidden_h, hidden_c, "
                f"got {sorted(inputs)}; export an LSTM checkpoint with `hamlet-model export-onnx`"
            )
        self.obs_dim, self.hidden_dim = int(inputs["obs"][1]), int(inputs["hidden_h"][2])
        self.action_dim = int(self._session.get_outputs()[0].shape[1])

    def step(self, body: bytes) -> bytes:
        """``obs [B, obs_dim] + h [B, H] + c [B, H]`` float32 bytes -> ``q [B, A] + h [B, H] + c [B, H]``."""
        flat = np.frombuffer(body, dtype="<f4")
        row = self.obs_dim + 2 * self.hidden_dim
        if flat.size == 0 or flat.size % row:
            raise ValueError(f"expected a multiple of {row} float32 values (obs + h + c per row), got {flat.size}")
        batch, split = flat.size // row, flat.size // row * self.obs_dim
        obs = flat[:split].reshape(batch, self.obs_dim)
        h = flat[split : split + batch * self.hidden_dim].reshape(1, batch, self.hidden_dim)
        c = flat[split + batch * self.hidden_dim :].reshape(1, batch, self.hidden_dim)
        q, h2, c2 = self._session.run(_OUTPUTS, {"obs": obs, "hidden_h": h, "hidden_c": c})
        return bytes(q.tobytes() + h2.tobytes() + c2.tobytes())


def build_app(model: RawStepModel) -> FastAPI:
    """The FastAPI app: ``POST /step`` (raw bytes in and out; 400 with the reason on a bad body), ``GET /ready``."""
    app = FastAPI()

    @app.post("/step")
    async def step(request: Request) -> Response:
        try:
            answer = model.step(await request.body())
        except ValueError as exc:
            return Response(content=str(exc), status_code=400, media_type="text/plain")
        return Response(content=answer, media_type="application/octet-stream")

    @app.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def main() -> None:
    """Serve until killed; print ``READY 127.0.0.1:PORT`` once listening."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True, help="a recurrent model's ONNX export")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free one)")
    args = parser.parse_args()
    app = build_app(RawStepModel(args.onnx))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(2048)  # connections made from now on wait in the backlog until uvicorn accepts them
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    print(f"READY 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])  # uvloop and httptools when installed (uvicorn[standard])


if __name__ == "__main__":
    main()
