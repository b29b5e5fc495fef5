"""``keep_last`` (``hamlet-train --keep-last N``): at most N training checkpoints on disk, every model kept."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from townlet.training.cli import main
from townlet.training.config import TrainConfig
from townlet.training.errors import TrainingConfigError
from townlet.training.trainer import prune_checkpoints, train, training_checkpoints

FAST = TrainConfig(
    level="L0_0",
    episodes=4,
    seed=1,
    num_envs=2,
    buffer_capacity=300,
    batch_size=8,
    learning_starts=16,
    train_frequency=4,
    target_update_frequency=10,
    epsilon_decay=0.5,
    checkpoint_every=1,
)


def _names(directory: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in directory.glob(f"{prefix}_ep*.pt"))


def test_keep_last_bounds_training_checkpoints_and_keeps_every_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(dataclasses.replace(FAST, out=str(out), keep_last=2))
    assert _names(out, "checkpoint") == ["checkpoint_ep00003.pt", "checkpoint_ep00004.pt"]
    assert _names(out, "model") == [f"model_ep0000{i}.pt" for i in range(1, 5)]
    assert [p.name for p in result.removed] == ["checkpoint_ep00001.pt", "checkpoint_ep00002.pt"]


def test_resume_continues_from_the_newest_kept_checkpoint_and_keeps_pruning(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(dataclasses.replace(FAST, out=str(out), episodes=3, keep_last=1))
    assert _names(out, "checkpoint") == ["checkpoint_ep00003.pt"]
    result = train(dataclasses.replace(FAST, out=str(out), episodes=5, keep_last=1), resume=True)
    assert result.episode == 5
    assert _names(out, "checkpoint") == ["checkpoint_ep00005.pt"]
    assert len(_names(out, "model")) == 5


def test_default_keeps_everything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(dataclasses.replace(FAST, out=str(out), episodes=3))
    assert len(_names(out, "checkpoint")) == 3


def test_prune_leaves_other_files_and_orders_by_episode_number(tmp_path: Path) -> None:
    for name in ("checkpoint_ep00010.pt", "checkpoint_ep00009.pt", "checkpoint_ep00100.pt", "model_ep00009.pt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "checkpoint_ep_notes.pt").write_bytes(b"")
    removed = prune_checkpoints(tmp_path, keep_last=1)
    assert [p.name for p in removed] == ["checkpoint_ep00009.pt", "checkpoint_ep00010.pt"]
    assert [p.name for p in training_checkpoints(tmp_path)] == ["checkpoint_ep00100.pt"]
    assert (tmp_path / "model_ep00009.pt").exists() and (tmp_path / "checkpoint_ep_notes.pt").exists()
    assert prune_checkpoints(tmp_path, keep_last=0) == []


def test_negative_keep_last_is_refused() -> None:
    with pytest.raises(TrainingConfigError, match="keep_last"):
        dataclasses.replace(FAST, keep_last=-1)


def test_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["--level", "L0_0", "--out", str(out), "--episodes", "3", "--checkpoint-every", "1", "--quiet"]
    small = ["--num-envs", "2", "--buffer-capacity", "300", "--batch-size", "8", "--learning-starts", "16"]
    assert main([*args, *small, "--keep-last", "1"]) == 0
    assert _names(out, "checkpoint") == ["checkpoint_ep00003.pt"]
    printed = capsys.readouterr().out
    assert printed.count("(training checkpoint removed: --keep-last)") == 2
