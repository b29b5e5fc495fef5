"""What a file is when it is plainly not a torch checkpoint: an ONNX model, a text file, an empty file.

``torch.save`` writes a zip archive (``PK``) or, in its legacy format, a pickle (``0x80``). Any other first
bytes mean the file was never a checkpoint, and torch's own error for it (which suggests re-running with
unsafe loading) would mislead; `not_a_checkpoint` names the file's kind and what is expected instead.
"""

from __future__ import annotations

__all__ = ["EXPECTED", "not_a_checkpoint"]

EXPECTED = "expected a model_ep*.pt or checkpoint_ep*.pt written by torch.save"

_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def not_a_checkpoint(name: str, head: bytes) -> str | None:
    """A one-line reason when the file ``name`` whose first bytes are ``head`` (512 are plenty) is not a torch
    checkpoint, else None (it may be one: let torch try)."""
    if head.startswith(_TORCH_MAGIC):
        return None
    if not head:
        return f"{name} is empty, not a torch checkpoint; {EXPECTED}"
    if name.lower().endswith(".onnx") or (head[:1] == b"\x08" and b"pytorch" in head):
        return (
            f"{name} is an ONNX model, not a torch checkpoint; {EXPECTED}. Compare it with its checkpoint "
            f"with 'hamlet-model verify-onnx {name} CHECKPOINT'; run it with townlet.inference.onnx_runtime.OnnxModel"
        )
    try:
        first = head.decode("utf-8").strip().splitlines()[0][:40]
    except (UnicodeDecodeError, IndexError):
        return f"{name} is not a torch checkpoint (it starts with bytes {head[:8].hex(' ')}); {EXPECTED}"
    return f"{name} is a text file (it starts {first!r}), not a torch checkpoint; {EXPECTED}"
