"""Write a file so that no reader ever sees half of it: checkpoints and exported models alike.

The bytes go to a hidden temporary file beside the target (``.<name>.<random>.tmp``, which no checkpoint
name parser accepts), are fsynced, made readable by others (``mkstemp`` creates 0600; a checkpoint is meant
to be read by a server) and renamed over the target. On any failure the temporary file is removed and the
target is left as it was. No torch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it onto ``path``; returns ``path``.

    Creates the parent folders. ``write`` gets a binary file object open for writing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
