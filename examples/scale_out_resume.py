#!/usr/bin/env python3
"""Drive several Hamlet Serve replicas with episodes that survive one going away (``resume=True``).

    openssl rand -hex 32 > keys                                           # one snapshot key, shared
    hamlet-server serve --models models --port 50051 --snapshot-key-file keys &   # two (or more) replicas
    hamlet-server serve --models models --port 50052 --snapshot-key-file keys --metrics-port 9465 &
    python examples/scale_out_resume.py --targets 127.0.0.1:50051 127.0.0.1:50052 --streams 8 --steps 400
    # stop one replica meanwhile (Ctrl-C / SIGTERM drains it; SIGKILL too): no episode notices

One `HamletClient` over the list of ``ip:port`` targets balances with gRPC's ``round_robin`` (on Kubernetes:
one ``dns:///headless-service:50051`` target, docs/SCALING.md): each episode stream opens on one replica and
stays there. With ``resume=True`` the client keeps the newest snapshot of the episode (the LSTM state the
server holds) that the server sends with every step and, when its replica drains, dies or times out,
reopens the episode from that snapshot on another replica and sends the step again: the Q-values continue
exactly and the loop below never sees an error. ``Episode.resumes`` counts the moves.

Each stream plays ``--envs`` environments of the model's level (L2: a fresh layout per episode) and
restarts each one as it dies. The streams are stepped in turn from one thread. Prints, per stream, the env
steps, the finished episodes, their mean survival and how often the stream moved replica. Needs only
``pip install ./client ./sim`` (no torch).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hamlet_client import Episode, HamletClient
from townlet.env import VectorTownletEnv


@dataclass
class StreamRun:
    """What one episode stream did: its actions ``[steps, envs]``, the finished episodes' survival steps and
    how often it moved to another replica."""

    actions: list[np.ndarray] = field(default_factory=list)
    survival: list[int] = field(default_factory=list)
    resumes: int = 0


def play(
    client: HamletClient,
    model: str,
    streams: int,
    envs: int,
    steps: int,
    seed: int = 0,
    on_round: Callable[[int], None] | None = None,
) -> list[StreamRun]:
    """Play ``streams`` resumable episode streams of ``envs`` environments each for ``steps`` lock steps,
    greedily; ``on_round(t)`` is called after every round of steps (t = 1, 2, ...)."""
    level = client.metadata(model).extra.get("level", "L2")
    worlds = [VectorTownletEnv(level, envs, seed=seed + i, relayout_each_reset=True) for i in range(streams)]
    episodes: list[Episode] = []
    runs = [StreamRun() for _ in range(streams)]
    try:
        for i in range(streams):
            episodes.append(client.episode(model, num_envs=envs, seed=seed + i, resume=True))
        observations = [world.reset() for world in worlds]
        resets = [np.ones(envs, dtype=bool) for _ in range(streams)]
        for t in range(1, steps + 1):
            for i, (world, episode, run) in enumerate(zip(worlds, episodes, runs, strict=True)):
                if resets[i].any() and t > 1:
                    observations[i] = world.reset_envs(resets[i])  # restart the envs that ended
                step = episode.step(observations[i], reset=resets[i], action_mask=world.action_masks())
                run.actions.append(step.actions)
                observations[i], _, done, info = world.step(step.actions)
                resets[i] = done | info["truncated"]
                run.survival += info["step_counts"][resets[i]].astype(int).tolist()
            if on_round is not None:
                on_round(t)
    finally:
        for episode, run in zip(episodes, runs, strict=False):
            run.resumes = episode.resumes
            episode.close()
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", required=True, help="the replicas, as ip:port (or one dns:/// target)")
    parser.add_argument("--model", default="townlet-L2-lstm", help="a served model (default: the L2 demo model)")
    parser.add_argument("--streams", type=int, default=8, help="episode streams, spread over the replicas")
    parser.add_argument("--envs", type=int, default=4, help="environments per stream")
    parser.add_argument("--steps", type=int, default=400, help="lock steps per stream")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    targets = args.targets[0] if len(args.targets) == 1 else args.targets
    with HamletClient(targets) as client:
        runs = play(client, args.model, args.streams, args.envs, args.steps, args.seed)
    print(f"{args.model} on {', '.join(args.targets)}: {args.streams} streams x {args.envs} envs x {args.steps} steps")
    for i, run in enumerate(runs):
        mean = f"{np.mean(run.survival):.1f}" if run.survival else "-"
        print(f"  stream {i}: {len(run.actions) * args.envs} env steps, {len(run.survival)} episodes finished "
              f"(mean survival {mean}), moved replica {run.resumes} time(s)")  # fmt: skip
    print(f"total replica moves: {sum(run.resumes for run in runs)}; every step was answered")


if __name__ == "__main__":
    main()
