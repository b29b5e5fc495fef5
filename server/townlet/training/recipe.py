"""A shipped model's recipe and the head of its training log: the check that the documented command still
makes the shipped model.

Each demo model's README gives the ``hamlet-train`` command that made it, and its folder holds
``train_log_head.txt``: the first episodes of that run, one line each, the weights hash after them, and the
hash of the shipped checkpoint's weights. The trainer is deterministic per seed and no setting depends on
the run's target episode count, so the first N episodes of the documented command must reproduce those
lines exactly; when a simulator or trainer change breaks that, the recipe no longer makes the model.

    python -m townlet.training.recipe models/townlet-L1-mlp --episodes 5            # print the head
    python -m townlet.training.recipe models/townlet-L1-mlp --check                  # compare with the file

The weights hash is sha256 over the state_dict's names and raw tensor bytes in key order (file hashes
differ between runs: checkpoints record when they were written).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from townlet.training.config import TrainConfig
from townlet.training.errors import TrainingConfigError
from townlet.training.trainer import EpisodeStats, train

__all__ = [
    "HEAD_FILE",
    "check_head",
    "cpu_kind",
    "episode_line",
    "recipe_command",
    "recipe_config",
    "recorded_cpu_kind",
    "recorded_head",
    "run_head",
    "weights_sha256",
]

HEAD_FILE = "train_log_head.txt"
_RECORDED_ON = "# recorded on: "


def cpu_kind() -> str:
    """This machine's CPU as ``vendor model`` from /proc/cpuinfo (e.g. ``AuthenticAMD AMD EPYC``), "unknown"
    where there is none. Float results of training are bit-identical only on one CPU kind (and torch build):
    its SIMD kernels round differently from another's."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown"
    return f"{fields.get('vendor_id', '?')} {fields.get('model name', '?')}"


def recorded_cpu_kind(model_dir: str | Path) -> str | None:
    """The CPU kind ``model_dir``'s head was recorded on (its ``# recorded on:`` line), None if it says none."""
    for line in (Path(model_dir) / HEAD_FILE).read_text(encoding="utf-8").splitlines():
        if line.startswith(_RECORDED_ON):
            return line[len(_RECORDED_ON) :].strip()
    return None


_COMMAND = re.compile(r"^hamlet-train (?!evaluate)(.+)$", re.MULTILINE)


def recipe_command(model_dir: str | Path) -> list[str]:
    """The ``hamlet-train`` arguments of the training command in ``model_dir/README.md`` (continuations joined)."""
    readme = Path(model_dir) / "README.md"
    text = readme.read_text(encoding="utf-8").replace("\\\n", " ")
    found = _COMMAND.findall(text)
    if len(found) != 1:
        raise TrainingConfigError(
            f"{readme} should give exactly one 'hamlet-train ...' training command, found {len(found)}; "
            "write the command that made the model on one line (continuations with a backslash are joined)"
        )
    return shlex.split(found[0])


def recipe_config(argv: Sequence[str]) -> TrainConfig:
    """The `TrainConfig` that ``hamlet-train ARGV`` trains with (parsed by the CLI's own parser)."""
    from townlet.training.cli import train_parser

    given = vars(train_parser().parse_args(list(argv)))
    return TrainConfig(**{k: v for k, v in given.items() if k not in ("resume", "quiet", "verbose")})


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex of the names and raw bytes of ``state_dict``'s tensors, in key order."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def episode_line(stats: EpisodeStats) -> str:
    """One episode of the log, every number exact (``repr``) and no wall time."""
    return (
        f"episode {stats.episode}: survival {stats.mean_survival!r} (max {stats.max_survival}) "
        f"return {stats.mean_return!r} epsilon {stats.epsilon!r} loss {stats.loss!r} "
        f"env steps {stats.total_steps} grad steps {stats.gradient_steps}"
    )


def run_head(config: TrainConfig, episodes: int, head: int | None = None) -> list[str]:
    """Train ``config`` for ``episodes`` episodes in a scratch folder; returns the first ``head`` (default:
    all) episode lines and a last line with the weights hash after ``episodes``."""
    lines: list[str] = []
    limit = episodes if head is None else head

    def keep(stats: EpisodeStats) -> None:
        if stats.episode <= limit:
            lines.append(episode_line(stats))

    with tempfile.TemporaryDirectory(prefix="recipe-head-") as scratch:
        short = replace(config, episodes=episodes, out=scratch, checkpoint_every=episodes, keep_last=0)
        with torch.random.fork_rng(devices=[]):
            result = train(short, on_episode=keep)
    return [*lines, f"weights after episode {episodes}: sha256 {weights_sha256(result.q_network.state_dict())}"]


def recorded_head(model_dir: str | Path) -> list[str]:
    """The recorded lines of ``model_dir/train_log_head.txt`` (comments and blank lines dropped)."""
    text = (Path(model_dir) / HEAD_FILE).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def check_head(model_dir: str | Path) -> tuple[list[str], list[str]]:
    """``(recorded, rerun)``: the recorded episode lines of ``model_dir`` and the same episodes rerun now
    from its README's command (each list ends with the weights hash after those episodes)."""
    recorded = [line for line in recorded_head(model_dir) if not line.startswith("shipped ")]
    episodes = sum(line.startswith("episode ") for line in recorded)
    if episodes == 0:
        raise TrainingConfigError(f"{Path(model_dir) / HEAD_FILE} records no 'episode N: ...' lines")
    return recorded, run_head(recipe_config(recipe_command(model_dir)), episodes)


def main(argv: Sequence[str] | None = None) -> int:
    """Print a model's recipe head (``--episodes N``) or compare it with the recorded one (``--check``)."""
    parser = argparse.ArgumentParser(prog="python -m townlet.training.recipe", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="a folder with README.md (the hamlet-train command) and model_ep*.pt")
    parser.add_argument("--episodes", type=int, default=5, help="episodes to run (default: 5)")
    parser.add_argument("--head", type=int, default=None, help="episode lines to print (default: all)")
    parser.add_argument("--check", action="store_true", help=f"compare with the recorded {HEAD_FILE}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.check:
        recorded, rerun = check_head(args.model_dir)
        for want, got in zip(recorded, rerun, strict=True):
            print(("same " if want == got else "DIFF ") + got + ("" if want == got else f"\n  recorded {want}"))
        return 0 if recorded == rerun else 1
    print("\n".join(run_head(recipe_config(recipe_command(args.model_dir)), args.episodes, args.head)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
