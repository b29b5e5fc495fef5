"""Every test that starts a process is marked ``slow``, so ``make test-fast`` (``-m "not slow"``) starts none.

Read from the source: a test starts a process when its body, or a function of its module that it calls
(directly or through another one), uses `subprocess`, `spawn_ready` or `create_subprocess_exec`.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SPAWNS = {"subprocess", "spawn_ready", "create_subprocess_exec", "Popen"}


def _names(node: ast.AST) -> set[str]:
    found = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    return found | {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def _is_slow(decorators: list[ast.expr]) -> bool:
    return any(isinstance(d, ast.Attribute) and d.attr == "slow" for d in decorators)


def _spawning_functions(tree: ast.Module) -> set[str]:
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)}
    spawning = {name for name, f in functions.items() if _names(f) & SPAWNS}
    while True:  # a function calling a spawning one spawns too
        more = {name for name, f in functions.items() if name not in spawning and _names(f) & spawning}
        if not more:
            return spawning
        spawning |= more


def _module_is_slow(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            return "slow" in _names(node.value)
    return False


def test_tests_that_start_processes_are_marked_slow() -> None:
    unmarked = []
    for path in sorted(TESTS.glob("*/test_*.py")):
        tree = ast.parse(path.read_text())
        if _module_is_slow(tree):
            continue
        spawning = _spawning_functions(tree)
        for node in tree.body:
            is_test = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
            if is_test and node.name in spawning and not _is_slow(node.decorator_list):
                unmarked.append(f"{path.relative_to(TESTS).as_posix()}::{node.name}")
    assert not unmarked, f"these start a process: mark them @pytest.mark.slow: {unmarked}"
