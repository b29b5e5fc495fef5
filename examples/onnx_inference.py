#!/usr/bin/env python3
"""Run an exported Hamlet agent with onnxruntime from plain Python: numpy + onnxruntime, no PyTorch.

Export first (``hamlet-model export-onnx model_ep10000.pt agent.onnx --verify``), then:

    python examples/onnx_inference.py --onnx agent.onnx --steps 20
    python examples/onnx_inference.py            # exports the trained L2 demo model to a temp dir (needs torch)

With ``--onnx`` this script never imports torch; it prints whether torch got loaded to prove it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort


def open_session(path: Path) -> tuple[ort.InferenceSession, dict[str, str]]:
    """One thread, sequential, all graph optimisations: the right settings for a model this small."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return session, dict(session.get_modelmeta().custom_metadata_map)


def rollout(session: ort.InferenceSession, meta: dict[str, str], steps: int, batch: int, seed: int) -> np.ndarray:
    """Greedy actions for ``steps`` random observations, feeding the LSTM state back; returns ``[steps, B]``."""
    rng = np.random.default_rng(seed)
    obs_dim = int(meta["obs_dim"])
    recurrent = meta["network_type"] == "recurrent"
    if recurrent:  # hidden_h / hidden_c are [1, B, H]; zeros at the start of an episode
        h = np.zeros((1, batch, int(meta["hidden_dim"])), np.float32)
        c = np.zeros_like(h)
    chosen = []
    for _ in range(steps):
        feeds = {"obs": rng.random((batch, obs_dim), dtype=np.float32)}
        if recurrent:
            feeds.update(hidden_h=h, hidden_c=c)
            q_values, h, c = session.run(["q_values", "new_hidden_h", "new_hidden_c"], feeds)
        else:
            (q_values,) = session.run(["q_values"], feeds)
        chosen.append(q_values.argmax(axis=1))
    return np.stack(chosen)


DEMO_L2 = Path(__file__).resolve().parent.parent / "models" / "townlet-L2-lstm" / "model_ep01175.pt"


def export_demo(folder: Path) -> Path:
    """Export (and verify) the trained L2 demo model from models/. Imports torch."""
    from townlet.inference import HamletModel

    return HamletModel.load(DEMO_L2).export_to_onnx(folder / "demo.onnx", verify=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, help="an .onnx file from `hamlet-model export-onnx`")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.onnx or export_demo(Path(scratch))
        session, meta = open_session(path)
    print(
        f"{meta['network_type']} network: obs_dim {meta['obs_dim']}, action_dim {meta['action_dim']}, "
        f"opset {meta['opset']}, exported with torch {meta['torch_version']}"
    )
    print("inputs: " + ", ".join(f"{i.name}{i.shape}" for i in session.get_inputs()))
    actions = rollout(session, meta, args.steps, args.batch, args.seed)
    counts = np.bincount(actions.ravel(), minlength=int(meta["action_dim"]))
    print(f"{args.steps} steps x batch {args.batch}: greedy action counts {counts.tolist()}")
    print(f"torch imported: {'torch' in sys.modules}")
    print("onnx_inference: OK")


if __name__ == "__main__":
    main()
