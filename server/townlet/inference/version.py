"""The installed version of Hamlet Serve's server distribution, and the `--version` flag of its commands.

add_version_flag(parser)      # `hamlet-model --version` -> "hamlet-model 0.1.0"
"""

from __future__ import annotations

import argparse
import importlib.metadata

__all__ = ["add_version_flag", "package_version"]

DISTRIBUTION = "hamlet-server"


def package_version(distribution: str = DISTRIBUTION) -> str:
    """The installed version of ``distribution``; "unknown" when it is imported from a source tree only."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def add_version_flag(parser: argparse.ArgumentParser, distribution: str = DISTRIBUTION) -> None:
    """``--version``: print "PROG VERSION" and exit 0."""
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {package_version(distribution)}",
        help="print the version and exit",
    )  # fmt: skip
