#!/usr/bin/env python3
"""Transfer learning: load a trained Hamlet agent, freeze its vision encoder, fine-tune the rest, save it.

The recurrent network's CNN (``vision_encoder``) learned to read the 5x5 window; a new task with the same
observation layout can keep it and re-learn the LSTM and Q-head. Here the "new task" is a few DQN-style
regression steps towards fixed targets (in practice: your replay buffer and TD targets).

    python examples/transfer_learning.py                       # the trained L2 demo model in models/
    python examples/transfer_learning.py --checkpoint model_ep10000.pt --steps 200 --out finetuned.pt
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from townlet.inference import HamletModel

DEMO_L2 = Path(__file__).resolve().parent.parent / "models" / "townlet-L2-lstm" / "model_ep01175.pt"


def freeze(module: nn.Module) -> int:
    """Stop gradients into ``module``; returns how many parameters were frozen."""
    for param in module.parameters():
        param.requires_grad_(False)
    return sum(p.numel() for p in module.parameters())


def fine_tune(network: nn.Module, steps: int, batch: int, lr: float, seed: int) -> tuple[float, float]:
    """A few Adam steps of Q-regression on a fixed synthetic batch; returns (first loss, last loss)."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.rand(batch, int(network.obs_dim), generator=gen)
    actions = torch.randint(0, int(network.action_dim), (batch,), generator=gen)
    targets = torch.rand(batch, generator=gen) * 2 - 1  # stand-ins for r + gamma * max Q'
    optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=lr)
    network.train()
    losses = []
    for _ in range(steps):
        q_values, _ = network(obs, None)  # hidden=None: zeros, one-step sequences
        loss = nn.functional.smooth_l1_loss(q_values.gather(1, actions[:, None]).squeeze(1), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    network.eval()
    return losses[0], losses[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", type=Path, default=DEMO_L2, help="an L2/L3 checkpoint (default: the trained demo model)"
    )
    parser.add_argument("--out", type=Path, help="where to save the fine-tuned model (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        model = HamletModel.load(args.checkpoint)
        if not model.is_recurrent:
            parser.error("this example freezes the vision encoder of a recurrent (L2/L3) model")
        network = model.network
        vision_before = {k: v.clone() for k, v in network.vision_encoder.state_dict().items()}
        head_before = network.q_head[3].weight.detach().clone()

        frozen = freeze(network.vision_encoder)
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        print(f"frozen vision_encoder: {frozen:,} params; fine-tuning {trainable:,} params")
        first, last = fine_tune(network, args.steps, args.batch, args.lr, args.seed)
        print(f"loss {first:.4f} -> {last:.4f} after {args.steps} steps")

        vision_same = all(torch.equal(v, network.vision_encoder.state_dict()[k]) for k, v in vision_before.items())
        head_moved = not torch.equal(head_before, network.q_head[3].weight)
        print(f"vision_encoder unchanged: {vision_same}; q_head changed: {head_moved}")

        out = args.out or Path(scratch) / "finetuned.pt"
        metadata = {**model.metadata, "fine_tuned_from": model.metadata.get("sha256"), "fine_tune_steps": args.steps}
        HamletModel(network, metadata).save(out)
        reloaded = HamletModel.load(out)
        same = all(torch.equal(v, reloaded.network.state_dict()[k]) for k, v in network.state_dict().items())
        print(f"saved {out.name}; reloads with identical weights: {same}")
    if not (vision_same and head_moved and same and last < first):
        raise SystemExit("transfer_learning: FAILED")
    print("transfer_learning: OK")


if __name__ == "__main__":
    main()
