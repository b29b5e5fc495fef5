"""One rule for checkpoint file names: formatting and parsing agree, and the trainer, the migration and the
server's model repository all read a directory the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hamlet_server.repository import scan_models
from townlet.inference.filenames import (
    INFERENCE_GLOB,
    TRAINING_GLOB,
    CheckpointName,
    inference_checkpoint_name,
    parse_checkpoint_name,
    training_checkpoint_name,
)
from townlet.inference.migration import inference_path_for, plan_migration
from townlet.training.trainer import training_checkpoints


def test_hamlet_names_are_zero_padded_to_five_digits() -> None:
    assert training_checkpoint_name(100) == "checkpoint_ep00100.pt"
    assert inference_checkpoint_name(7) == "model_ep00007.pt"
    assert inference_checkpoint_name(123456) == "model_ep123456.pt"
    assert Path(inference_checkpoint_name(3)).match(INFERENCE_GLOB)
    assert Path(training_checkpoint_name(3)).match(TRAINING_GLOB)


@given(st.integers(min_value=0, max_value=10**9))
def test_parse_inverts_format(episode: int) -> None:
    assert parse_checkpoint_name(inference_checkpoint_name(episode)) == CheckpointName("model", episode)
    assert parse_checkpoint_name(training_checkpoint_name(episode)) == CheckpointName("checkpoint", episode)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model_ep7.pt", CheckpointName("model", 7)),  # any number of digits
        ("mlp_ep00007.pt", CheckpointName("mlp", 7)),  # a single-file model of the server's repository
        ("my_ep_net_ep12.pt", CheckpointName("my_ep_net", 12)),
        ("checkpoint_ep_notes.pt", None),
        ("step100.pt", None),  # "ep" inside a word is no episode number
        ("model_ep00001.pt.tmp", None),
        (".model_ep00001.pt", None),  # hidden: atomic_write's temporary files start with a dot
        ("model_ep-1.pt", None),
        ("_ep5.pt", None),
    ],
)
def test_parse_accepts_only_stem_ep_digits_pt(name: str, expected: CheckpointName | None) -> None:
    assert parse_checkpoint_name(name) == expected


def test_kinds() -> None:
    assert CheckpointName("model", 1).is_inference and not CheckpointName("model", 1).is_training
    assert CheckpointName("checkpoint", 1).is_training and not CheckpointName("checkpoint", 1).is_inference
    single_file = CheckpointName("mlp", 1)
    assert not single_file.is_inference and not single_file.is_training


@pytest.mark.parametrize("episode", [-1, 1.0, True, "3"])
def test_a_bad_episode_is_refused_with_what_arrived(episode: object) -> None:
    with pytest.raises(ValueError, match="integer >= 0, got"):
        inference_checkpoint_name(episode)  # type: ignore[arg-type]


def test_trainer_migration_and_repository_read_one_folder_alike(tmp_path: Path) -> None:
    run = tmp_path / "repo" / "run"
    run.mkdir(parents=True)
    names = [training_checkpoint_name(e) for e in (2, 10)] + ["checkpoint_ep7.pt", "checkpoint_ep_notes.pt"]
    names += [inference_checkpoint_name(10), "step100.pt", f".{training_checkpoint_name(30)}.x.tmp"]
    for name in names:
        (run / name).write_bytes(b"")

    assert [p.name for p in training_checkpoints(run)] == [
        "checkpoint_ep00002.pt",
        "checkpoint_ep7.pt",
        "checkpoint_ep00010.pt",
    ]
    planned = {source.name: target.name for source, target in plan_migration([run])}
    assert planned == {
        "checkpoint_ep00002.pt": "model_ep00002.pt",
        "checkpoint_ep00010.pt": "model_ep00010.pt",
        "checkpoint_ep7.pt": "model_ep00007.pt",
    }
    assert inference_path_for(run / "final.pt").name == "model_final.pt"
    versions = scan_models(tmp_path / "repo")["run"]
    assert {v: f.path.name for v, f in versions.items()} == {
        2: "checkpoint_ep00002.pt",
        7: "checkpoint_ep7.pt",
        10: "model_ep00010.pt",  # the inference file wins over the training file of its episode
    }
