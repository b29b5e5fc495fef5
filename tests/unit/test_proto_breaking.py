"""The contract guard: `make contract` (buf lint + buf breaking against proto/released/hamlet-v1.binpb), the
command `make lint` runs, passes on the real proto/ and fails on a copy with a deliberately breaking edit.

Each test runs that same make target on a copy of proto/ (``PROTO_DIR=...``). buf comes from npm through
npx (``make node-deps`` installs Node.js from Debian when it is missing; ``make test`` and ``make lint`` run it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto"
SERVICE = Path("hamlet/v1/inference_service.proto")
TENSOR = Path("hamlet/v1/tensor.proto")

pytestmark = [
    pytest.mark.slow,  # npx starts node (seconds; the first run downloads buf from npm)
    pytest.mark.skipif(
        shutil.which("npx") is None or shutil.which("make") is None,
        reason="buf runs through npx: Node.js is missing (`make node-deps` installs it; make test runs that)",
    ),
]


def _contract(proto_dir: Path) -> subprocess.CompletedProcess[str]:
    """`make contract` on `proto_dir` (a copy of proto/)."""
    return subprocess.run(
        ["make", "-s", "--no-print-directory", "contract", f"PROTO_DIR={proto_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _copy_with(tmp_path: Path, file: Path, old: str, new: str) -> Path:
    """A copy of proto/ whose `file` has `old` (which must occur once) replaced by `new`."""
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy)
    text = (copy / file).read_text()
    assert text.count(old) == 1, f"{file} no longer holds {old!r} once: update this test's edit"
    (copy / file).write_text(text.replace(old, new))
    return copy


def test_the_real_contract_passes(tmp_path: Path) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy)
    result = _contract(copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("file", "old", "new", "complaint"),
    [
        # a field's type: int32 -> int64 changes the wire encoding of negative values and the generated types
        (SERVICE, "  int32 num_envs = 5;\n  // Attach", "  int64 num_envs = 5;\n  // Attach", "changed type"),
        # a field's number: old clients would write observations where the server now reads nothing
        (
            SERVICE,
            "  Tensor observations = 3;\n  // Recurrent",
            "  Tensor observations = 13;\n  // Recurrent",
            "deleted",
        ),
        # a field deleted without reserving its number
        (TENSOR, "  bytes data = 3;\n", "", "deleted"),
    ],
    ids=["field-type", "field-number", "field-deleted"],
)
def test_a_breaking_edit_fails_the_check(tmp_path: Path, file: Path, old: str, new: str, complaint: str) -> None:
    result = _contract(_copy_with(tmp_path, file, old, new))
    assert result.returncode != 0, f"buf breaking let a breaking edit through:\n{result.stdout}{result.stderr}"
    assert complaint in (result.stdout + result.stderr).lower(), result.stdout + result.stderr


def test_an_added_field_passes(tmp_path: Path) -> None:
    """Without the old `reserved 8 to 15;` an added field is what it should be: not a breaking change."""
    old = "  Tensor action_mask = 7;\n}"
    copy = _copy_with(tmp_path, SERVICE, old, "  Tensor action_mask = 7;\n  string request_id = 8;\n}")
    result = _contract(copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_baseline_differs_from_the_shipped_contract_only_by_the_dropped_reserved_ranges() -> None:
    """The clean-up that made the baseline removed unused `reserved N to 15;` ranges and nothing else."""
    buf = ["npx", "--yes", "@bufbuild/buf@1"]
    released = PROTO / "released"
    result = subprocess.run(
        [*buf, "breaking", str(released / "hamlet-v1.binpb"), "--against", str(released / "hamlet-v1-d9032c2.binpb"),
         "--error-format", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    findings = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert findings, f"expected the removed reserved ranges to be reported: {result.stderr}"
    assert {f["type"] for f in findings} <= {"RESERVED_MESSAGE_NO_DELETE", "RESERVED_ENUM_NO_DELETE"}, findings
    assert all(re.search(r"\[\d+,15\]|\[18,29\]", f["message"]) for f in findings), findings
