"""mypy is strict for every package: set globally (an override's ``strict`` is not a per-module flag), over
every package of the tree, and no override turns a whole module's checking off but
the generated stubs (the client's, and the server's v2)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
MYPY = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
GENERATED = {
    "hamlet_client._generated.*",
    "hamlet_server._generated_v2.*",
}  # `make proto` output (scripts/gen_proto.py)


def test_strict_is_global_and_no_override_sets_it() -> None:
    assert MYPY["strict"] is True
    assert not [o["module"] for o in MYPY.get("overrides", []) if "strict" in o]


def test_every_package_is_checked() -> None:
    packages = {p.parent for base in ("server", "client") for p in (ROOT / base).glob("*/__init__.py")}
    assert {p.relative_to(ROOT).as_posix() for p in packages} <= set(MYPY["files"])


def test_overrides_are_narrow() -> None:
    for override in MYPY.get("overrides", []):
        if override.get("ignore_errors"):
            assert set(override["module"]) <= GENERATED, override["module"]
        else:
            assert set(override) == {"module", "disable_error_code"} and len(override["disable_error_code"]) == 1
