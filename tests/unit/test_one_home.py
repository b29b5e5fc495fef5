"""Each fact has one home: checkpoint file names, the one-line quote of a foreign error, the meter and
affordance names, the device rule. A second copy appearing anywhere in the packages fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from townlet.inference.errors import first_line

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "server", ROOT / "client" / "hamlet_client"]


def _sources() -> dict[str, str]:
    return {
        path.relative_to(ROOT).as_posix(): path.read_text()
        for base in PACKAGES
        for path in base.rglob("*.py")
        if "_generated" not in path.parts
    }


def _defining(pattern: str) -> set[str]:
    return {name for name, text in _sources().items() if re.search(pattern, text, re.MULTILINE)}


def test_checkpoint_names_are_parsed_in_one_module() -> None:
    assert _defining(r"_ep\(\\d\+\)|ep\(\\d\+\)") <= {"server/townlet/inference/filenames.py"}
    assert _defining(r"^_NAME = re\.compile") == {"server/townlet/inference/filenames.py"}
    assert _defining(r"f\"(model|checkpoint)_ep\{") == set()  # written by filenames.inference_checkpoint_name


def test_one_first_line_helper() -> None:
    assert _defining(r"^def _?first_line\(") == {"server/townlet/inference/errors.py"}


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("  bad magic number\n  at offset 0\n"), "bad magic number"),
        (ValueError(""), "ValueError"),
        (OSError("x" * 400), "x" * 300),
    ],
)
def test_first_line(exc: BaseException, expected: str) -> None:
    assert first_line(exc) == expected


def test_meter_and_affordance_names_live_in_the_env() -> None:
    assert _defining(r"^METER_NAMES\b") == {"server/townlet/env/meters.py"}
    assert _defining(r"^AFFORDANCE_NAMES\b") == {"server/townlet/env/affordances.py"}


def test_dead_names_stay_gone() -> None:
    assert not _defining(r"^NO_RETRY\b")


@pytest.mark.parametrize(
    "rule", ["expected finite values", "allow no action", r"expected a number in \[0, 1\]", "takes no hidden state",
             r"or \[B, ", r"def _?check_finite\("],
)  # fmt: skip
def test_each_input_rule_of_the_server_and_the_library_lives_in_validation(rule: str) -> None:
    # hamlet_client checks a few of them before sending, in its own words: it cannot import the server's packages
    assert {name for name in _defining(rule) if name.startswith("server/")} == {
        "server/townlet/inference/validation.py"
    }


def test_one_device_rule_and_one_atomic_write() -> None:
    assert _defining(r"^def resolve_device\(") == {"server/townlet/inference/model.py"}
    assert _defining(r"os\.fsync\(") == {"server/townlet/inference/atomic_write.py"}


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    from townlet.inference.atomic_write import atomic_write

    target = atomic_write(tmp_path / "sub" / "model_ep00001.pt", lambda handle: handle.write(b"first"))
    assert target.read_bytes() == b"first" and target.stat().st_mode & 0o777 == 0o644

    def broken(handle: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"first" and [p.name for p in target.parent.iterdir()] == [target.name]
