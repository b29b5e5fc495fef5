"""status: what a client reads of an error is ours: one short line, no terminal escapes, no torch advice."""

from __future__ import annotations

import grpc

from hamlet_server.repository import ModelLoadError
from hamlet_server.status import MAX_MESSAGE_CHARS, client_message, status_for

# What torch 2.6+ raises for a weights_only refusal (ANSI bold included), as a loader might quote it.
TORCH_REFUSAL = (
    "Weights only load failed. This file can still be loaded, to do so you have two options, \x1b[1mdo those "
    "steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) In PyTorch 2.6, we changed the default "
    "value of the `weights_only` argument in `torch.load` from `False` to `True`. Re-running `torch.load` with "
    "`weights_only` set to `False` will likely succeed, but it can result in arbitrary code execution."
)


def test_torch_advice_and_ansi_escapes_never_reach_a_client() -> None:
    code, message, reason = status_for(
        ModelLoadError(f"model 'm' version 3 is not servable: CheckpointError: not a readable torch checkpoint: "
                       f"{TORCH_REFUSAL}")
    )  # fmt: skip
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_NOT_SERVABLE")
    assert message == (
        "model 'm' version 3 is not servable: CheckpointError: not a readable torch checkpoint: torch's "
        "weights_only loading refused the file (nothing in it was run)"
    )


def test_client_messages_are_one_line_without_escapes_and_bounded() -> None:
    assert client_message("obs: \x1b[31mred\x1b[0m\nsecond line\tand a tab\x07") == "obs: red second line and a tab"
    assert client_message("\x1b]0;title\x07x") == "0;title x"  # an OSC escape loses its ESC and BEL
    long = client_message("x" * 5000)
    assert long.startswith("x" * MAX_MESSAGE_CHARS) and len(long) < MAX_MESSAGE_CHARS + 40


def test_an_internal_error_is_sanitised_too() -> None:
    code, message, _ = status_for(RuntimeError("boom \x1b[1mbold\x1b[0m\nTraceback line"))
    assert code is grpc.StatusCode.INTERNAL and message == "internal error: RuntimeError: boom bold Traceback line"
