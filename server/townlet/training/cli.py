"""``hamlet-train``: train a Townlet agent with the compact DQN trainer, or evaluate a model against random.

    hamlet-train --level L1 --episodes 300 --out runs/L1            # train (writes both checkpoint kinds)
    hamlet-train --out runs/L1 --episodes 400 --resume              # continue the same run to episode 400
    hamlet-train evaluate runs/L1/model_ep00300.pt --level L1 --episodes 100 --seed 7

Every training option is a `TrainConfig` field; its documentation is the ``--help`` text. Exit codes: 0 done,
2 a user error (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from townlet.inference.errors import InferenceError
from townlet.inference.version import add_version_flag
from townlet.training.errors import TrainingError

__all__ = ["main", "train_parser"]

PROG = "hamlet-train"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["evaluate"]:
            return _evaluate(_evaluate_parser().parse_args(args[1:]))
        if args[:1] == ["train"]:
            args = args[1:]
        return _train(train_parser().parse_args(args))
    except (TrainingError, InferenceError, FileNotFoundError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted (the last checkpoint written is the one to --resume from)", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- train


def train_parser() -> argparse.ArgumentParser:
    """The training parser: one flag per `TrainConfig` field (its help text), plus --resume, --quiet, --verbose."""
    from townlet.training.config import TrainConfig

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a Hamlet Q-network on a Townlet level with DQN. Writes Hamlet-layout training "
        "checkpoints (checkpoint_epNNNNN.pt) and, beside each, an inference checkpoint (model_epNNNNN.pt).",
        epilog=f"Evaluate a model against the random policy: '{PROG} evaluate --help'.",
        argument_default=argparse.SUPPRESS,
    )
    add_version_flag(parser)
    for spec in dataclasses.fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        text = f"{spec.metadata['help']} (default: {spec.default})"
        if isinstance(spec.default, bool):
            parser.add_argument(flag, action="store_true", help=text)
        else:
            kind = type(spec.default)
            parser.add_argument(flag, type=kind, metavar=kind.__name__.upper(), help=text)
    parser.add_argument(
        "--resume",
        action="store_true",
        default=False,
        help="continue from the latest checkpoint in --out with its saved settings (only --episodes, "
        "--checkpoint-every and --keep-last may change)",
    )
    parser.add_argument("--quiet", action="store_true", default=False, help="no progress bar")
    parser.add_argument("--verbose", action="store_true", default=False, help="log every 10 episodes (INFO)")
    return parser


def _train(args: argparse.Namespace) -> int:
    import torch

    from townlet.training.config import TrainConfig
    from townlet.training.trainer import latest_checkpoint, train

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    given = {k: v for k, v in vars(args).items() if k not in ("resume", "quiet", "verbose")}
    if args.resume:
        out = Path(given.get("out", TrainConfig.out))
        path = latest_checkpoint(out)
        if path is None:
            raise FileNotFoundError(f"nothing to resume: {out} holds no checkpoint_epNNNNN.pt")
        saved = torch.load(path, map_location="cpu", weights_only=True)["training_config"].get("townlet_trainer")
        if not isinstance(saved, dict):
            raise TrainingError(f"{path} was not written by hamlet-train; it cannot be resumed")
        config = TrainConfig.from_dict({**saved, **given})
    else:
        config = TrainConfig(**given)
    bar = None if args.quiet else _ProgressBar(sys.stderr)
    started = time.perf_counter()
    result = train(config, resume=args.resume, on_episode=bar.update if bar else None)
    if bar:
        bar.close()
    elapsed = time.perf_counter() - started
    print(f"trained {config.network_type} network on {config.level} to episode {result.episode} in {elapsed:.0f} s")
    removed = set(result.removed)
    for training_path, model_path in zip(result.checkpoints, result.models, strict=True):
        note = "  (training checkpoint removed: --keep-last)" if training_path in removed else ""
        print(f"  {training_path}  {model_path.name}{note}")
    return 0


class _ProgressBar:
    """One self-rewriting line on a terminal; a plain line every 10 episodes otherwise."""

    def __init__(self, stream: TextIO, width: int = 24) -> None:
        self._stream = stream
        self._width = width
        self._tty = stream.isatty()

    def update(self, stats: Any) -> None:
        done = stats.episode / stats.episodes
        filled = int(done * self._width)
        rate = stats.wall_seconds / max(stats.episode, 1)
        loss = "-" if stats.loss is None else f"{stats.loss:.4f}"
        line = (
            f"[{'#' * filled}{'.' * (self._width - filled)}] {stats.episode}/{stats.episodes} "
            f"survival {stats.mean_survival:5.1f} (max {stats.max_survival}) eps {stats.epsilon:.3f} "
            f"loss {loss} {stats.wall_seconds:.0f}s/~{rate * stats.episodes:.0f}s"
        )
        if self._tty:
            self._stream.write("\r" + line)
            self._stream.flush()
        elif stats.episode % 10 == 0 or stats.episode == stats.episodes:
            self._stream.write(line + "\n")

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")


# --------------------------------------------------------------------------- evaluate


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} evaluate",
        description="Play a model greedily (with action masks) and the uniform random valid policy on the same "
        "episodes (same layout, same start cells) and print the spread of survival steps of both and the mean "
        "number of different affordances each used per episode ('afford'; JSON: mean_affordances).",
    )
    parser.add_argument("model", type=Path, help="a model_ep*.pt or checkpoint_ep*.pt file")
    parser.add_argument("--level", required=True, help="level to play: L0_0, L0_5, L1, L2 or L3")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per policy (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seeds start cells and the random policy (default: 0)")
    parser.add_argument(
        "--layout",
        choices=("trained", "seed", "relayout", "unseen", "compare"),
        default="trained",
        help="trained: the affordance layout the model was trained on (recorded in the file; falls back to "
        "'seed' if absent); seed: one layout drawn from --seed; relayout: a fresh layout per episode; "
        "unseen: one layout per episode from a random stream no training run uses, never the trained "
        "layout; compare: trained and unseen side by side, each against random (default: trained)",
    )
    parser.add_argument(
        "--depletion-multiplier", type=float, default=1.0, help="curriculum depletion scale (default: 1.0, full)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from townlet.inference.model import HamletModel
    from townlet.training.evaluate import SurvivalStats, play_model, play_random, unseen_layouts

    torch.set_num_threads(1)
    model = HamletModel.load(args.model)
    trained_layout = _trained_layout(args.model, model.metadata)
    common = {"depletion_multiplier": args.depletion_multiplier}
    settings: dict[str, tuple[str, dict[str, Any]]] = {}  # row label -> (layout description, run_episodes kwargs)
    if args.layout in ("trained", "compare"):
        name = "trained" if trained_layout is not None else "seed (the model records no training layout)"
        settings["trained"] = (name, {"layout": trained_layout})
    if args.layout in ("seed", "relayout"):
        settings[args.layout] = (args.layout, {"relayout": args.layout == "relayout"})
    if args.layout in ("unseen", "compare"):
        exclude = [trained_layout] if trained_layout is not None else []
        layouts = unseen_layouts(args.level, args.episodes, args.seed, exclude=exclude)
        settings["unseen"] = ("unseen (one per episode, never the trained one)", {"layouts": layouts})
    started = time.perf_counter()
    results = {
        label: (
            SurvivalStats.of_results(play_model(model, args.level, args.episodes, args.seed, **kwargs, **common)),
            SurvivalStats.of_results(play_random(args.level, args.episodes, args.seed, **kwargs, **common)),
        )
        for label, (_, kwargs) in settings.items()
    }
    elapsed = time.perf_counter() - started
    setting = {
        "model": str(args.model),
        "level": args.level,
        "episodes": args.episodes,
        "seed": args.seed,
        "layout": " + ".join(name for name, _ in settings.values()),
        "depletion_multiplier": args.depletion_multiplier,
    }
    if args.json:
        if len(results) == 1:
            (trained, random), *_ = results.values()
            print(json.dumps({**setting, "model_stats": trained.to_dict(), "random_stats": random.to_dict()}, indent=2))
        else:
            per_layout = {k: {"model_stats": m.to_dict(), "random_stats": r.to_dict()} for k, (m, r) in results.items()}
            print(json.dumps({**setting, **per_layout}, indent=2))
        return 0
    print(
        f"{args.model} on {args.level}: {args.episodes} episodes per policy, seed {args.seed}, "
        f"layout {setting['layout']}, depletion multiplier {args.depletion_multiplier} ({elapsed:.1f} s)"
    )
    if len(results) == 1:
        _print_single(*next(iter(results.values())))
    else:
        _print_table(results)
    return 0


def _print_single(trained: Any, random: Any) -> None:
    print(f"{'policy':<8} {'mean':>7} {'std':>7} {'median':>7} {'min':>5} {'max':>5} {'afford':>6}   survival steps")
    for name, stats in (("model", trained), ("random", random)):
        print(
            f"{name:<8} {stats.mean:7.1f} {stats.std:7.1f} {stats.median:7.1f} {stats.min:5d} {stats.max:5d}"
            f" {stats.mean_affordances:6.2f}   {stats.mean:.1f} ± {stats.std:.1f}"
        )
    print(f"ratio of mean survival, model to random: {trained.mean / random.mean:.2f}x")
    print("afford: mean number of different affordances used (successful INTERACTs) per episode")


def _print_table(results: dict[str, tuple[Any, Any]]) -> None:
    print(f"{'layouts':<9} {'policy':<8} {'mean':>7} {'std':>7} {'median':>7} {'min':>5} {'max':>5} {'afford':>6}")
    for label, pair in results.items():
        for name, stats in zip(("model", "random"), pair, strict=True):
            print(
                f"{label:<9} {name:<8} {stats.mean:7.1f} {stats.std:7.1f} {stats.median:7.1f} "
                f"{stats.min:5d} {stats.max:5d} {stats.mean_affordances:6.2f}"
            )
    ratios = ", ".join(f"{label} {m.mean / r.mean:.2f}x" for label, (m, r) in results.items())
    print(f"ratio of mean survival, model to random: {ratios}")
    print("afford: mean number of different affordances used (successful INTERACTs) per episode")


def _trained_layout(path: Path, metadata: dict[str, Any]) -> dict[str, tuple[int, int]] | None:
    """The affordance layout a model trained on: inference metadata, or a training checkpoint's layout."""
    recorded = metadata.get("affordance_layout")
    if recorded is None and metadata.get("format_version") == "training_v2":
        import torch

        recorded = torch.load(path, map_location="cpu", weights_only=True)["affordance_layout"]["positions"] or None
    if not recorded:
        return None
    return {str(name): (int(cell[0]), int(cell[1])) for name, cell in recorded.items()}


if __name__ == "__main__":
    sys.exit(main())
