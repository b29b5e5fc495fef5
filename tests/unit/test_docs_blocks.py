"""The shell blocks of README.md and the model-layer docs run as written, in order, like a newcomer typing them.

Each page's ``bash`` blocks run one after the other in one scratch folder that looks like a fresh clone after
``make install`` (``models/``, ``examples/``, ``scripts/`` and ``.venv`` linked in), so a block may use what
an earlier block made. A block that cannot run offline without a server is listed in `NOT_RUN` with the
reason and the test that covers it instead; a new block must be runnable or listed, and a listed phrase that
no longer matches a block fails too. The Python blocks of docs/INFERENCE_USAGE.md run in
tests/unit/test_docs_inference.py (they need checkpoint files made in-process).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/INFERENCE_USAGE.md", "docs/CLIENT.md", "docs/HAMLET_FORMATS.md")
PYTHON_BLOCKS_RUN_ELSEWHERE = {"docs/INFERENCE_USAGE.md": "tests/unit/test_docs_inference.py"}

NOT_RUN = {
    "make install     #": "runs make test, which runs this test: covered by every CI run of the suite",
    "# terminal 1": "starts a server (tests/e2e/test_make_serve.py)",
    "# terminal 2": "calls the server of the block before (tests/integration/test_client_sdk.py does the same calls)",
    "--episodes 300": "trains for ~5 minutes; the README's migrate block runs hamlet-train for 2 episodes",
    "pip install ./client": "builds a fresh venv (tests/e2e/test_client_clean_venv.py)",
    'HamletClient("localhost:50051") as client': "needs a server (tests/integration/test_client_sdk.py)",
    "with client.episode(": "needs a server (tests/integration/test_client_sdk.py)",
    "import asyncio": "needs a server (tests/integration/test_client_sdk.py)",
    "from hamlet_client import InvalidArgumentError": "needs a server (tests/integration/test_client_sdk.py)",
    'HamletClient("serve.example:443"': "names hosts that do not exist (tests/integration/test_security.py)",
    "from hamlet_client.proto import": "run by test_client_md_raw_messages_block_runs below",
}

_BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", flags=re.S | re.M)


def _blocks(page: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer((REPO / page).read_text())]


def _skip_reason(page: str, lang: str, body: str) -> str | None:
    for phrase, reason in NOT_RUN.items():
        if phrase in body:
            return reason
    if lang == "python" and page in PYTHON_BLOCKS_RUN_ELSEWHERE:
        return f"run by {PYTHON_BLOCKS_RUN_ELSEWHERE[page]}"
    return None


def _runnable(page: str) -> list[str]:
    return [body for lang, body in _blocks(page) if lang == "bash" and _skip_reason(page, lang, body) is None]


def test_every_block_is_run_or_says_why_not() -> None:
    unaccounted = []
    used = set()
    for page in PAGES:
        for lang, body in _blocks(page):
            used.update(phrase for phrase in NOT_RUN if phrase in body)
            if lang == "python" and _skip_reason(page, lang, body) is None:
                unaccounted.append(f"{page}: python block starting {body.splitlines()[0]!r}")
    assert not unaccounted, "run these blocks here or list them in NOT_RUN with a reason:\n" + "\n".join(unaccounted)
    assert not set(NOT_RUN) - used, f"NOT_RUN phrases that match no block any more: {sorted(set(NOT_RUN) - used)}"
    assert _runnable("README.md") and _runnable("docs/INFERENCE_USAGE.md")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A folder that looks like a checkout after ``make install``, without the source tree's other files."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file() or not (venv / "bin" / "hamlet-model").is_file():
        pytest.skip(f"{venv} is not a virtual environment with the project installed")
    for name in ("models", "examples", "scripts"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / ".venv").symlink_to(venv)
    return tmp_path


def _run_page(page: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    outputs = []
    for index, body in enumerate(_runnable(page)):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{page} bash block {index} exited {done.returncode}:\n{body}\n{done.stderr}"
        outputs.append(done.stdout)
    return "\n".join(outputs)


@pytest.mark.slow  # trains two tiny runs and starts a dozen processes
def test_readme_shell_blocks_run(clone: Path) -> None:
    out = _run_page("README.md", clone)
    assert re.search(r"^\[\d\] \(1, 6\) \(1, 1, 256\)$", out, flags=re.M), out  # numpy in, numpy out
    assert re.search(r"^episode\s+200$", out, flags=re.M)  # hamlet-model inspect of the trained demo model
    assert "migrated 2 checkpoint(s)" in out
    assert (clone / "my-models" / "quick-L1" / "model_ep00002.pt").is_file()


@pytest.mark.slow  # trains a tiny run and starts a handful of processes
def test_inference_usage_shell_block_runs(clone: Path) -> None:
    out = _run_page("docs/INFERENCE_USAGE.md", clone)
    assert "dry run: 1 checkpoint(s), nothing written" in out
    assert "migrated 1 checkpoint(s)" in out and "migrated 0 checkpoint(s)" in out and "1 skipped" in out
    assert '"episode": 1,' in out and '"format_version": "inference_v1"' in out


def test_client_md_raw_messages_block_runs() -> None:
    (body,) = [b for lang, b in _blocks("docs/CLIENT.md") if lang == "python" and "from hamlet_client.proto" in b]
    namespace: dict[str, object] = {}
    exec(compile(body, "docs/CLIENT.md", "exec"), namespace)  # the documented block, as written
    assert hasattr(namespace["pb"], "PredictRequest") and hasattr(namespace["pb_grpc"], "InferenceServiceStub")
