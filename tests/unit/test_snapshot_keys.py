"""Snapshot keys (`--snapshot-key-file`): read, checked at startup, derived per purpose, rotated; and the rules
a resumed state shares with a fresh start and step (step index, environment count)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from pathlib import Path

import pytest

from hamlet_server.config import ServerConfig, config_from_args, parse_flags
from hamlet_server.sessions import MAX_STEP_INDEX, EnvLimitError, StepLimitError, check_num_envs, check_step_index
from hamlet_server.snapshot_keys import MIN_KEY_BYTES, SnapshotKeys, read_snapshot_keys
from hamlet_server.startup import StartupError, check_startup

KEY, OLD = b"k" * 32, b"o" * 32
PAYLOAD = b"an EpisodeState"


def _file(tmp_path: Path, text: str, name: str = "keys") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_no_path_means_no_keys() -> None:
    assert read_snapshot_keys("") is None


def test_keys_are_stripped_and_blank_lines_skipped(tmp_path: Path) -> None:
    keys = read_snapshot_keys(_file(tmp_path, f"\n  {KEY.decode()}  \r\n\n{OLD.decode()}\n"))
    assert keys == SnapshotKeys.from_secrets([KEY, OLD])


def test_the_first_key_signs_and_every_key_verifies() -> None:
    rotating = SnapshotKeys.from_secrets([KEY, OLD])
    old_only, new_only = SnapshotKeys.from_secrets([OLD]), SnapshotKeys.from_secrets([KEY])
    assert rotating.sign(PAYLOAD) == new_only.sign(PAYLOAD) != old_only.sign(PAYLOAD)
    assert rotating.verify(PAYLOAD, old_only.sign(PAYLOAD)) and rotating.verify(PAYLOAD, new_only.sign(PAYLOAD))
    assert not new_only.verify(PAYLOAD, old_only.sign(PAYLOAD))  # the previous key, once dropped
    assert not rotating.verify(PAYLOAD + b"!", rotating.sign(PAYLOAD)) and not rotating.verify(PAYLOAD, b"")


def test_the_mac_key_is_derived_not_the_secret_itself() -> None:
    """A secret reused elsewhere by mistake (say, as a bearer token) does not sign snapshots directly."""
    mac = SnapshotKeys.from_secrets([KEY]).sign(PAYLOAD)
    assert len(mac) == 32 and mac != hmac.new(KEY, PAYLOAD, hashlib.sha256).digest()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        (" \n\n", "the file is empty"),
        ("short\n", f"key 1 is 5 bytes; a snapshot key needs at least {MIN_KEY_BYTES}"),
        (f"{KEY.decode()}\nshort\n", "key 2 is 5 bytes"),
    ],
)
def test_a_file_without_a_good_key_is_refused_naming_the_flag(tmp_path: Path, text: str, message: str) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(ValueError, match=f"--snapshot-key-file {path}: .*") as raised:
        read_snapshot_keys(path)
    assert message in str(raised.value)


def test_a_missing_key_file_stops_the_server_at_startup(tmp_path: Path) -> None:
    config = ServerConfig(models=tmp_path, port=0, metrics_port=0, snapshot_key_file=str(tmp_path / "nope"))
    with pytest.raises(StartupError, match=r"--snapshot-key-file .*nope: no such file; fix the path"):
        check_startup(config)
    too_short = dataclasses.replace(config, snapshot_key_file=_file(tmp_path, "0123456789\n"))
    with pytest.raises(StartupError, match="key 1 is 10 bytes"):
        check_startup(too_short)


def test_the_settings_come_from_flags_or_the_environment(tmp_path: Path) -> None:
    path = _file(tmp_path, KEY.decode())
    assert parse_flags(["--snapshot-key-file", path]).snapshot_key_file == path
    assert config_from_args(environ={"HAMLET_SNAPSHOT_KEY_FILE": path}).snapshot_key_file == path
    assert parse_flags(["--allow-unsigned-snapshots"]).allow_unsigned_snapshots
    assert config_from_args(environ={"HAMLET_ALLOW_UNSIGNED_SNAPSHOTS": "true"}).allow_unsigned_snapshots


def test_a_key_and_allow_unsigned_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--allow-unsigned-snapshots with --snapshot-key-file"):
        ServerConfig(snapshot_key_file=_file(tmp_path, KEY.decode()), allow_unsigned_snapshots=True)


def test_one_rule_for_a_step_index() -> None:
    assert check_step_index(0, "step") == 0 and check_step_index(MAX_STEP_INDEX - 1, "step") == MAX_STEP_INDEX - 1
    for bad in (-1, MAX_STEP_INDEX, 2**63 - 1):
        with pytest.raises(StepLimitError, match=rf"resume_from.step_index: expected a step index in 0\.\.\d+ .*{bad}"):
            check_step_index(bad, "resume_from.step_index")


def test_one_rule_for_an_environment_count() -> None:
    assert check_num_envs(4, 4, "start.num_envs") == 4
    for bad in (0, 5):
        with pytest.raises(
            EnvLimitError, match=rf"start.num_envs: expected 1\.\.4 environments \(--max-envs\), got {bad}"
        ):
            check_num_envs(bad, 4, "start.num_envs")
