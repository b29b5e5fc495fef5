"""Write a model repository of seeded, UNTRAINED checkpoints of both Hamlet network types, for experiments.

    python scripts/make_demo_models.py --out DIR [--force]

Writes `DIR/untrained-mlp-L1/model_ep00000.pt` (SimpleQNetwork, obs 91, 6 actions, ~0.12 MB) and
`DIR/untrained-lstm-L2/model_ep00000.pt` (RecurrentSpatialQNetwork, obs 54, 6 actions, ~2.6 MB) in the
inference_v1 format. Their weights are random (seed 0 and 1) and their metadata says `untrained: True`:
their actions mean nothing. Serve them with `hamlet-server serve --models DIR`. The trained demo models
that `make serve` hosts are in models/ (see models/README.md); this script never writes there unless told.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.inference import HamletModel, save_inference_checkpoint
from townlet.inference.filenames import inference_checkpoint_name

MODELS = Path(__file__).resolve().parent.parent / "models"
DESCRIPTION = "UNTRAINED: seeded random weights for smoke tests and demos; actions are meaningless"


def demo_networks() -> dict[str, torch.nn.Module]:
    """The two untrained networks, each built under its own fixed seed."""
    torch.manual_seed(0)
    mlp = SimpleQNetwork(obs_dim=91, action_dim=6)
    torch.manual_seed(1)
    lstm = RecurrentSpatialQNetwork(action_dim=6, window_size=5, num_meters=8, num_affordance_types=14, hidden_dim=256)
    return {"untrained-mlp-L1": mlp, "untrained-lstm-L2": lstm}


def write_demo_models(out: Path, *, force: bool = False, episode: int = 0) -> list[Path]:
    """Write both models under `out`; existing files are kept unless `force`."""
    written = []
    for name, network in demo_networks().items():
        path = out / name / inference_checkpoint_name(episode)
        if path.exists() and not force:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"episode": episode, "untrained": True, "description": DESCRIPTION}
        save_inference_checkpoint(HamletModel(network), path, metadata=metadata)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="repository directory to write into")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    if args.out.resolve() == MODELS.resolve():
        parser.error(f"{args.out} holds the trained demo models that `make serve` hosts; pick another --out")
    for path in write_demo_models(args.out, force=args.force):
        print(f"make_demo_models: wrote {path} (untrained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
