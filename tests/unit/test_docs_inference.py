"""Every Python block of docs/INFERENCE_USAGE.md runs, in order, against real checkpoint files."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hamlet_runs import write_training_checkpoint

from townlet.inference.migration import migrate_checkpoint

DOC = Path(__file__).resolve().parents[2] / "docs" / "INFERENCE_USAGE.md"


def test_inference_usage_snippets_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_training_checkpoint(tmp_path, "recurrent", episode=10000)
    l1 = write_training_checkpoint(tmp_path / "l1", "simple", episode=10000)
    migrate_checkpoint(l1, tmp_path / "model_ep10000.pt")
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict[str, object] = {}
    for index, block in enumerate(blocks):
        try:
            exec(compile(block, f"{DOC.name}[block {index}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"docs block {index} failed: {exc!r}\n{block}")
    out = capsys.readouterr().out
    assert "HamletModel(simple, obs_dim=91, action_dim=6, episode=10000, device=cpu)" in out
    assert "obs: expected shape [91] or [B, 91], got [1, 54]" in out
    assert "does_not_exist.pt: no such file" in out
    assert os.path.exists("model_ep00100.pt") and os.path.exists("model_spec.pt")
    assert isinstance(namespace["q_values"], np.ndarray)  # "numpy in, numpy out", as the page says
    hidden = namespace["hidden"]  # the episode_start block's state: numpy (h, c) each [1, 4, 256]
    assert isinstance(hidden, tuple) and all(isinstance(t, np.ndarray) and t.shape == (1, 4, 256) for t in hidden)


def _imported(tree: ast.AST) -> set[str]:
    """The names ``import`` statements in ``tree`` bind."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def test_each_block_imports_what_it_uses() -> None:
    """A newcomer pastes one section's block alone: every imported name a block uses (the page's imports:
    HamletModel, np, torch, ...) is imported in that block, not only in an earlier one."""
    trees = [ast.parse(block) for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)]
    importable = set().union(*(_imported(tree) for tree in trees))
    missing = {}
    for index, tree in enumerate(trees):
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
        unimported = sorted((used & importable) - _imported(tree))
        if unimported:
            missing[index] = unimported
    assert not missing, f"blocks of {DOC.name} use names they do not import (block index: names): {missing}"
