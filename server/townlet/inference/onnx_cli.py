"""The ``hamlet-model export-onnx`` and ``hamlet-model verify-onnx`` subcommands.

`add_onnx_commands` registers them on the CLI's subparsers (``townlet.inference.cli`` does so when the
``onnx`` extra is installed). Each handler returns an exit code: 0 success, 1 the file was checked and does
not match the model, 2 a user error (one line ``hamlet-model: error: ...`` on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from townlet.inference.errors import InferenceError
from townlet.inference.validation import ONNX_ATOL, ONNX_RTOL

if TYPE_CHECKING:
    from townlet.inference.onnx_export import ExportVerificationError, OnnxVerificationReport

# `cli.py` registers these commands only if importing this module works; onnx and onnxruntime themselves are
# imported when a command runs, so `hamlet-model --help` stays fast.
_MISSING = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(f"the ONNX commands need {' and '.join(_MISSING)}: pip install 'hamlet-server[onnx]'")

__all__ = ["add_onnx_commands", "export_onnx_command", "verify_onnx_command"]

PROG = "hamlet-model"


def add_onnx_commands(subparsers: Any) -> None:
    """Add ``export-onnx`` and ``verify-onnx`` to an ``argparse`` subparsers object."""
    export = subparsers.add_parser(
        "export-onnx",
        help="export a checkpoint to one self-contained .onnx file (dynamic batch, Hamlet metadata)",
        description="Load a checkpoint (inference_v1 or Hamlet training v2) and write it as ONNX: inputs obs "
        "(+ hidden_h, hidden_c), outputs q_values (+ new_hidden_h, new_hidden_c), batch axis dynamic, "
        "dims and checkpoint sha256 in metadata_props. Uses the TorchScript exporter (dynamo=False).",
    )
    export.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a model_ep*.pt or checkpoint_ep*.pt")
    export.add_argument("out", type=Path, metavar="OUT.onnx", help="where to write the ONNX file")
    export.add_argument(
        "--verify",
        action="store_true",
        help="compare onnxruntime with PyTorch (batch 1/7/256 and a 50-step rollout) before writing OUT.onnx; "
        "if any element has |onnx - torch| > atol + rtol * |torch|, write nothing and exit 1",
    )
    _add_tolerance(export)
    export.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset, 17 to 20 (default 17)")
    export.add_argument("--overwrite", action="store_true", help="replace OUT.onnx if it exists")
    _add_trust(export)
    export.set_defaults(func=export_onnx_command)

    verify = subparsers.add_parser(
        "verify-onnx",
        help="check that an .onnx file reproduces a checkpoint (metadata, weights, outputs within tolerance)",
        description="Run onnx.checker, compare the file's metadata_props and weight fingerprints with the "
        "checkpoint, then compare onnxruntime with PyTorch for every output at batch 1, 7 and 256 and over "
        "a 50-step rollout: every element must have |onnx - torch| <= atol + rtol * |torch|. Exit 0 if it "
        "matches, 1 if it does not, 2 on a user error.",
    )
    verify.add_argument("onnx", type=Path, metavar="OUT.onnx", help="an .onnx file written by export-onnx")
    verify.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="the checkpoint it was exported from")
    _add_tolerance(verify)
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    _add_trust(verify)
    verify.set_defaults(func=verify_onnx_command)


def export_onnx_command(args: argparse.Namespace) -> int:
    """``hamlet-model export-onnx CHECKPOINT OUT.onnx [--verify [--atol A] [--rtol R]] [--opset N] [--trust]
    [--overwrite]``."""
    from townlet.inference.model import HamletModel
    from townlet.inference.onnx_export import ExportVerificationError, export_to_onnx, export_verified

    if args.checkpoint.suffix.lower() == ".onnx" and args.out.suffix.lower() != ".onnx":
        return _user_error(
            f"{args.checkpoint} is where the ONNX file would go: export-onnx takes the checkpoint first, then "
            f"OUT.onnx; the arguments look swapped: run '{PROG} export-onnx {args.out} {args.checkpoint}'"
        )
    if args.out.exists() and not args.overwrite:
        return _user_error(f"{args.out} exists; pass --overwrite to replace it")
    if args.out.suffix != ".onnx":
        return _user_error(f"OUT should end in .onnx, got {str(args.out)!r}")
    report = None
    try:
        model = HamletModel.load(args.checkpoint, "cpu", trust_pickle=args.trust)
        started = time.perf_counter()
        if args.verify:
            path, report = export_verified(model, args.out, opset=args.opset, atol=args.atol, rtol=args.rtol)
        else:
            path = export_to_onnx(model, args.out, opset=args.opset)
        elapsed = time.perf_counter() - started
    except ExportVerificationError as exc:
        print(f"{PROG}: verification failed; {args.out} was not written", file=sys.stderr)
        return _failed(exc)
    except InferenceError as exc:
        return _user_error(str(exc))
    print(
        f"wrote {path} ({model.metadata['network_type']}, obs_dim {model.obs_dim}, action_dim {model.action_dim}, "
        f"{path.stat().st_size / 1024:.0f} KiB, opset {args.opset}) in {elapsed:.2f}s"
        + (" including verification" if report is not None else "")
    )
    if report is not None:
        print(report.summary())
    return 0


def verify_onnx_command(args: argparse.Namespace) -> int:
    """``hamlet-model verify-onnx OUT.onnx CHECKPOINT [--atol A] [--rtol R] [--json] [--trust]``."""
    from townlet.inference.model import HamletModel
    from townlet.inference.onnx_export import ExportVerificationError, verify_onnx_export

    if not args.onnx.is_file():
        return _user_error(f"{args.onnx}: no such file")
    swapped = _swapped_arguments(args.onnx, args.checkpoint)
    if swapped:
        return _user_error(swapped)
    try:
        model = HamletModel.load(args.checkpoint, "cpu", trust_pickle=args.trust)
        report = verify_onnx_export(args.onnx, model, atol=args.atol, rtol=args.rtol)
    except ExportVerificationError as exc:
        return _failed(exc, as_json=args.json)
    except InferenceError as exc:
        return _user_error(str(exc))
    if args.json:
        print(json.dumps(_report_dict(report), indent=2))
    else:
        print(report.summary())
    return 0


def _swapped_arguments(onnx: Path, checkpoint: Path) -> str | None:
    """A one-line reason when ``verify-onnx``'s arguments look swapped (a torch checkpoint where the ONNX file
    goes, or an ONNX file where the checkpoint goes), else None."""
    from townlet.inference.file_kind import not_a_checkpoint

    onnx_is_torch = not_a_checkpoint(str(onnx), _head(onnx)) is None
    checkpoint_is_onnx = checkpoint.suffix.lower() == ".onnx" or (
        checkpoint.is_file() and "is an ONNX model" in (not_a_checkpoint(str(checkpoint), _head(checkpoint)) or "")
    )
    if not (onnx_is_torch or checkpoint_is_onnx):
        return None
    first = f"{onnx} is a torch checkpoint" if onnx_is_torch else f"{checkpoint} is an ONNX file"
    return (
        f"{first}: verify-onnx takes the ONNX file first, then the checkpoint it was exported from; "
        f"the arguments look swapped: run '{PROG} verify-onnx {checkpoint} {onnx}'"
        if onnx_is_torch and checkpoint_is_onnx
        else f"{first}: verify-onnx takes OUT.onnx (written by export-onnx) first, then CHECKPOINT "
        f"(a model_ep*.pt or checkpoint_ep*.pt): '{PROG} verify-onnx OUT.onnx CHECKPOINT'"
    )


def _head(path: Path) -> bytes:
    """The first 512 bytes of ``path`` (b"" if it cannot be read)."""
    try:
        with path.open("rb") as file:
            return file.read(512)
    except OSError:
        return b""


def _add_tolerance(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--atol", type=float, default=ONNX_ATOL, metavar="A",
        help=f"absolute part of the tolerance (default {ONNX_ATOL:g})",
    )  # fmt: skip
    parser.add_argument(
        "--rtol", type=float, default=ONNX_RTOL, metavar="R",
        help=f"relative part: an element passes when |onnx - torch| <= atol + rtol * |torch| "
        f"(default {ONNX_RTOL:g}; trained agents' |Q| of 50-100 need it)",
    )  # fmt: skip


def _add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust",
        action="store_true",
        help="allow arbitrary unpickling for checkpoints that need it (only for files you trust: it can run code)",
    )


def _user_error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _failed(exc: ExportVerificationError, as_json: bool = False) -> int:
    if exc.report is not None:
        if as_json:
            print(json.dumps(_report_dict(exc.report), indent=2))
        else:
            print(exc.report.summary())
    elif as_json:
        print(json.dumps({"onnx_path": exc.path, "passed": False, "problems": exc.problems}, indent=2))
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return 1


def _report_dict(report: OnnxVerificationReport) -> dict[str, Any]:
    return {**dataclasses.asdict(report), "passed": report.passed}
