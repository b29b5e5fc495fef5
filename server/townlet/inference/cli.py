"""``hamlet-model``: inspect checkpoints, migrate training runs to inference checkpoints, export ONNX.

Exit codes: 0 success, 1 some files failed (the rest were done), 2 a user error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from townlet.inference.errors import BrainSpecError, CheckpointError, InferenceError
from townlet.inference.version import add_version_flag

__all__ = ["main", "migrate_main"]

PROG = "hamlet-model"


class UserError(Exception):
    """A mistake in the command line or its inputs: reported as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to ``sys.exit``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return _run(args, PROG)


def migrate_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The ``migrate`` command as a program of its own (``scripts/migrate_checkpoints.py``): the same options,
    output and exit codes, with ``prog`` (default: the script's file name) in its usage line and errors."""
    parser = argparse.ArgumentParser(prog=prog, description=_MIGRATE_DESCRIPTION)
    _add_migrate_arguments(parser)
    return _run(parser.parse_args(argv), parser.prog)


def _run(args: argparse.Namespace, prog: str) -> int:
    try:
        return int(args.func(args))
    except (UserError, InferenceError, BrainSpecError, FileNotFoundError, FileExistsError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


_MIGRATE_DESCRIPTION = (
    "Convert Hamlet training checkpoints (v2) into inference checkpoints (inference_v1): only the online "
    "Q-network and its metadata are kept. Folders are searched recursively for checkpoint_ep*.pt. Each output "
    "goes beside its source unless --out is given; with --out, the folders below each PATH are mirrored under "
    "DIR, so runs that share episode numbers never collide."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect Hamlet checkpoints, turn training checkpoints into small inference checkpoints, "
        "and export models to ONNX.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    add_version_flag(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect",
        help="print a checkpoint's format, network, dims and training metadata",
        description="Load a checkpoint (inference_v1 or Hamlet training v2, detected from its contents) and "
        "print what it holds. Loading uses torch.load(weights_only=True): nothing in the file runs.",
    )
    inspect.add_argument("path", type=Path, help="a model_ep*.pt or checkpoint_ep*.pt file")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _add_trust(inspect)
    inspect.set_defaults(func=_inspect)

    migrate = commands.add_parser(
        "migrate",
        help="convert training checkpoints (files or run folders) into model_epNNNNN.pt inference checkpoints",
        description=_MIGRATE_DESCRIPTION,
    )
    _add_migrate_arguments(migrate)

    try:
        from townlet.inference.onnx_cli import add_onnx_commands
    except ImportError:  # the ONNX extra (onnx, onnxruntime) is not installed
        pass
    else:
        add_onnx_commands(commands)
    return parser


def _add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="checkpoint files or run folders")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write the outputs under DIR, mirroring the folders below each PATH"
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be written; write nothing")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    _add_trust(parser)
    parser.set_defaults(func=_migrate)


def _add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust",
        action="store_true",
        help="allow arbitrary unpickling for files that need it (only for files you trust: it can run code)",
    )


# --------------------------------------------------------------------------- inspect


def _inspect(args: argparse.Namespace) -> int:
    from townlet.inference.model import HamletModel

    foreign = _not_a_torch_file(args.path)
    if foreign:
        raise UserError(foreign)
    model = HamletModel.load(args.path, "cpu", trust_pickle=args.trust)
    info: dict[str, Any] = {"path": str(args.path), "file_bytes": args.path.stat().st_size, **model.metadata}
    info.pop("source_path", None)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        if key == "created_at" and isinstance(value, (int, float)):
            value = f"{value} ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(value))})"
        print(f"{key:<{width}}  {value}")
    return 0


def _not_a_torch_file(path: Path) -> str | None:
    from townlet.inference.file_kind import not_a_checkpoint

    try:
        with path.open("rb") as file:
            head = file.read(512)
    except OSError:
        return None  # missing or unreadable: the loader's message names the problem
    return not_a_checkpoint(str(path), head)


# --------------------------------------------------------------------------- migrate


def _migrate(args: argparse.Namespace) -> int:
    from townlet.inference.migration import MigrationConflictError, migrate_checkpoint, plan_migration

    try:
        plan = plan_migration(args.paths, args.out)
    except MigrationConflictError as exc:
        raise UserError(str(exc)) from None
    if not plan:
        raise UserError(f"no checkpoint_ep*.pt found under {', '.join(map(str, args.paths))}")
    if args.dry_run:
        for src, dst in plan:
            state = (
                "exists, would be replaced"
                if dst.exists() and args.overwrite
                else ("exists, would be skipped" if dst.exists() else "would be written")
            )
            print(f"{src} ({_mb(src.stat().st_size)}) -> {dst} [{state}]")
        print(f"dry run: {len(plan)} checkpoint(s), nothing written")
        return 0

    done, failed, skipped = [], 0, 0
    progress = _Progress(len(plan), sys.stderr)
    for src, dst in plan:
        progress.advance(src.name)
        if dst.exists() and not args.overwrite:
            progress.note(f"skip {dst} (exists; --overwrite replaces it)")
            skipped += 1
            continue
        try:
            done.append(migrate_checkpoint(src, dst, overwrite=args.overwrite, trust_pickle=args.trust))
        except CheckpointError as exc:
            progress.note(f"FAILED {exc}")
            failed += 1
    progress.finish()
    _size_report(done, skipped, failed)
    return 1 if failed else 0


def _size_report(done: list[Any], skipped: int, failed: int) -> None:
    for result in done:
        ratio = result.source_bytes / max(result.target_bytes, 1)
        print(
            f"{result.source} {_mb(result.source_bytes)} -> {result.target} {_mb(result.target_bytes)} "
            f"({ratio:.1f}x smaller)"
        )
    before = sum(r.source_bytes for r in done)
    after = sum(r.target_bytes for r in done)
    summary = f"migrated {len(done)} checkpoint(s): {_mb(before)} -> {_mb(after)}"
    if after:
        summary += f" ({before / after:.1f}x smaller)"
    print(summary + (f"; {skipped} skipped" if skipped else "") + (f"; {failed} FAILED" if failed else ""))


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


class _Progress:
    """A one-line progress bar on a terminal; plain lines elsewhere (CI logs, pipes)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.count, self.stream = total, 0, stream
        self.tty = stream.isatty()
        self.write: Callable[[str], Any] = stream.write

    def advance(self, label: str) -> None:
        self.count += 1
        filled = int(30 * self.count / self.total)
        line = f"[{'#' * filled}{'.' * (30 - filled)}] {self.count}/{self.total} {label}"
        self.write(f"\r{line:<80}" if self.tty else line + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        self.write(("\n" if self.tty else "") + message + "\n")

    def finish(self) -> None:
        if self.tty:
            self.write("\n")


if __name__ == "__main__":
    sys.exit(main())
