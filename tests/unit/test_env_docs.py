"""The API example in docs/ENVIRONMENT.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "ENVIRONMENT.md"


def test_environment_doc_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert blocks, f"no python example found in {DOC}"
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "doc_example"})
