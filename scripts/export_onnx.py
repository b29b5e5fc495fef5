#!/usr/bin/env python
"""Export a Hamlet checkpoint to ONNX: the seed's script name for ``hamlet-model export-onnx``.

    python scripts/export_onnx.py CHECKPOINT OUT.onnx [--verify] [--opset N] [--trust] [--overwrite]

Same code, options and exit codes as ``hamlet-model export-onnx`` (0 ok, 1 verification failed, 2 user error).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from townlet.inference.onnx_cli import add_onnx_commands

COMMAND = "export-onnx"


class _ExportOnly:
    """Hands `add_onnx_commands` a subparsers stand-in that keeps only ``export-onnx``, named as this script,
    so ``--help`` prints a usage line that works when followed."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.parser: argparse.ArgumentParser | None = None
        self._scratch = argparse.ArgumentParser().add_subparsers()

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name != COMMAND:
            return self._scratch.add_parser(name, **kwargs)  # verify-onnx: built, never used
        kwargs.pop("help", None)  # a subcommand's one-line summary; the description says it in full
        self.parser = argparse.ArgumentParser(prog=self.prog, **kwargs)
        return self.parser


def main(argv: Sequence[str] | None = None) -> int:
    commands = _ExportOnly(Path(sys.argv[0]).name)
    add_onnx_commands(commands)
    if commands.parser is None:  # pragma: no cover - add_onnx_commands always defines export-onnx
        raise SystemExit(f"export_onnx.py: the {COMMAND} command is missing from townlet.inference.onnx_cli")
    args = commands.parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
