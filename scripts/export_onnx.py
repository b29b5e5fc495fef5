#!/usr/bin/env python
"""Export a Hamlet checkpoint to ONNX: the seed's script name for ``hamlet-model export-onnx``.

    python scripts/export_onnx.py CHECKPOINT OUT.onnx [--verify] [--opset N] [--trust] [--overwrite]

Same code, options and exit codes as ``hamlet-model export-onnx`` (0 ok, 1 verification failed, 2 user error).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from townlet.inference.onnx_cli import add_onnx_commands


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export_onnx.py", add_help=False)
    add_onnx_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export-onnx", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
