"""What a newcomer meets in the first hour (issue 24): ``make help`` and the README say how to change the serve
port, and what the README's quick starts write is git-ignored, so a fresh clone stays clean."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _ignored_folders() -> set[str]:
    lines = (REPO / ".gitignore").read_text().splitlines()
    return {line.strip().rstrip("/") for line in lines if line.strip().endswith("/") and not line.startswith("#")}


def test_every_folder_the_readme_writes_is_git_ignored() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    outs = {m.group(1) for block in blocks for m in re.finditer(r"--out (\S+)", block)}
    assert {"runs/quick", "my-models/quick-L1"} <= outs  # the quick starts' train and migrate
    tops = {out.split("/")[0] for out in outs}
    assert tops <= _ignored_folders(), f"written by README blocks but not in .gitignore: {tops - _ignored_folders()}"


def test_the_readme_says_how_to_change_the_serve_port() -> None:
    readme = (REPO / "README.md").read_text()
    assert 'make serve SERVE_ARGS="--port 50052"' in readme and 'HamletClient("localhost:50052")' in readme


@pytest.mark.slow  # starts make
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_help_names_the_port_and_the_variables() -> None:
    command = ["make", "--no-print-directory", "help"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    serve = next(line for line in done.stdout.splitlines() if line.strip().startswith("make serve"))
    assert "127.0.0.1:50051" in serve and 'SERVE_ARGS="--port 50052"' in serve
    assert "variables:" in done.stdout and "MODELS=DIR" in done.stdout and "VIEW_ARGS=" in done.stdout
    assert "install" not in done.stderr  # help installs nothing
