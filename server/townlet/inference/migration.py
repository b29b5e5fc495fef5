"""Turn Hamlet training checkpoints (v2) into inference checkpoints (inference_v1).

Two entry points:

- `migrate_checkpoint` converts one existing ``checkpoint_epNNNNN.pt`` into ``model_epNNNNN.pt``
  (the ``hamlet-model migrate`` command runs it over files and whole run folders);
- `save_inference_beside` is what a training loop calls right after writing a training checkpoint, with
  the network still in memory, so the small inference file appears beside the big one at no reload cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from townlet.inference.checkpoint import load_training_checkpoint, save_inference_checkpoint
from townlet.inference.filenames import TRAINING_GLOB, inference_checkpoint_name, parse_checkpoint_name

__all__ = [
    "MigrationConflictError",
    "MigrationResult",
    "find_training_checkpoints",
    "inference_path_for",
    "migrate_checkpoint",
    "plan_migration",
    "save_inference_beside",
]


class MigrationConflictError(ValueError):
    """Two training checkpoints would be written to one inference checkpoint; the message names both."""


@dataclass(frozen=True)
class MigrationResult:
    """One converted file and the sizes before and after, in bytes."""

    source: Path
    target: Path
    source_bytes: int
    target_bytes: int
    episode: int | None


def inference_path_for(training_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """``checkpoint_ep00100.pt`` -> ``model_ep00100.pt`` in ``out_dir`` (default: beside); else ``model_<stem>.pt``."""
    training_path = Path(training_path)
    parsed = parse_checkpoint_name(training_path.name)
    if parsed is not None and parsed.is_training:
        name = inference_checkpoint_name(parsed.episode)
    else:
        name = f"model_{training_path.stem}.pt"
    return Path(out_dir if out_dir is not None else training_path.parent) / name


def find_training_checkpoints(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and run folders (searched recursively for ``checkpoint_ep*.pt``) into a sorted file list.

    Raises FileNotFoundError for a path that does not exist.
    """
    return list(dict.fromkeys(source for source, _ in _sources_with_roots(paths)))


def plan_migration(paths: Iterable[str | Path], out_dir: str | Path | None = None) -> list[tuple[Path, Path]]:
    """``(training checkpoint, inference checkpoint)`` pairs for files and run folders, in a stable order.

    Without ``out_dir`` each output goes beside its source. With it, a checkpoint found in a folder argument
    keeps its place relative to that folder, so runs that share episode numbers stay apart
    (``runs/a/checkpoints/checkpoint_ep00100.pt`` given as ``runs`` -> ``OUT/a/checkpoints/model_ep00100.pt``;
    one run's ``checkpoints/`` folder -> ``OUT/model_ep00100.pt``), and a file argument goes straight into
    ``out_dir``. Raises `MigrationConflictError` naming both sources when two would still share a target
    (two file arguments with one name), and FileNotFoundError for a path that does not exist.
    """
    plan: dict[Path, Path] = {}
    owners: dict[Path, Path] = {}
    for source, root in _sources_with_roots(paths):
        if source in plan:
            continue
        if out_dir is None:
            target = inference_path_for(source)
        else:
            relative = source.parent.relative_to(root) if root is not None else Path()
            target = inference_path_for(source, Path(out_dir) / relative)
        if target in owners:
            raise MigrationConflictError(
                f"{owners[target]} and {source} would both be written to {target}; migrate them into "
                "different --out folders, or pass their common parent folder so that --out mirrors the tree"
            )
        plan[source] = target
        owners[target] = source
    return list(plan.items())


def _sources_with_roots(paths: Iterable[str | Path]) -> list[tuple[Path, Path | None]]:
    """Each training checkpoint with the folder argument it was found in (None for a file argument)."""
    found: list[tuple[Path, Path | None]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend((source, path) for source in sorted(path.rglob(TRAINING_GLOB)) if _is_training(source))
        elif path.is_file():
            found.append((path, None))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return found


def _is_training(path: Path) -> bool:
    parsed = parse_checkpoint_name(path.name)
    return parsed is not None and parsed.is_training


def migrate_checkpoint(
    source: str | Path,
    target: str | Path | None = None,
    *,
    overwrite: bool = False,
    trust_pickle: bool = False,
) -> MigrationResult:
    """Convert one training checkpoint; ``target`` defaults to `inference_path_for(source)`.

    Raises FileExistsError when the target exists and ``overwrite`` is False, and `CheckpointError` when the
    source is not a loadable training checkpoint. The metadata records the source file's name and sha256.
    """
    source = Path(source)
    target = Path(target) if target is not None else inference_path_for(source)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    loaded = load_training_checkpoint(source, "cpu", trust_pickle=trust_pickle)
    meta = loaded.metadata
    metadata = _provenance(
        source,
        meta["episode"],
        meta["epsilon"],
        meta["curriculum_stage"],
        meta["config_dir"],
        {"trained_at": meta["created_at"], "source_sha256": meta["sha256"]},
    )
    save_inference_checkpoint(loaded.network, target, metadata)
    return MigrationResult(source, target, source.stat().st_size, target.stat().st_size, meta["episode"])


def save_inference_beside(
    training_path: str | Path,
    q_network: nn.Module,
    *,
    episode: int,
    epsilon: float | None = None,
    curriculum_stage: int | None = None,
    config_dir: str | None = None,
    brain_spec: dict[str, Any] | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model_epNNNNN.pt`` beside a just-written ``checkpoint_epNNNNN.pt`` (the seed's Phase 4).

    Call it from a training loop right after saving the training checkpoint; ``q_network`` is the online
    network (its weights are copied to CPU, the live network is not touched).
    """
    metadata = _provenance(training_path, episode, epsilon, curriculum_stage, config_dir, extra_metadata)
    return save_inference_checkpoint(q_network, inference_path_for(training_path), metadata, brain_spec)


def _provenance(
    training_path: str | Path,
    episode: int | None,
    epsilon: float | None,
    curriculum_stage: int | None,
    config_dir: str | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """The metadata every inference checkpoint made from a training checkpoint carries (one rule for both
    entry points): where in training it came from, and which file."""
    return {
        "episode": episode,
        "epsilon": epsilon,
        "curriculum_stage": curriculum_stage,
        "config_dir": config_dir,
        "source_checkpoint": Path(training_path).name,
        **(extra or {}),
    }
