"""The array operations the batcher and the hidden-state table need, once per array kind a backend runs on.

    ops = ops_for(backend)                  # NUMPY for onnxruntime, TorchOps(device) for torch / CUDA
    table = ops.zeros((64, H))              # the backend's own arrays, on its device
    h = ops.take(table, index)              # copies of rows ``index [B]``; ops.put(table, index, rows) writes
    q_host = ops.to_host(q)                 # numpy float32: Q always goes to the host once per batch

`StepBatcher` and `HiddenStateTable` are written once against `ArrayOps`; a backend says which kind it runs
on with its ``array_kind`` attribute ("numpy" or "torch"; a backend without one, `HamletModel`, is torch).
Observations, masks, reset flags and explicit hidden states arrive as numpy arrays on the host (the codec
decodes to numpy) and cross to the backend's kind once per batch with `ArrayOps.from_host`.

Exploration follows the backend's model layer, so a seeded stream or Predict call draws exactly what that
backend's library predict draws with the same seed: torch backends use a ``torch.Generator`` and
`townlet.inference.policy.epsilon_greedy` (`HamletModel.predict`), numpy backends a ``numpy.random.Generator``
(PCG64) and `epsilon_greedy_numpy` (`OnnxModel.predict`, the SDK's local policy). A generator's state travels
in episode snapshots with a prefix naming its kind (`generator_kind`); a state of the other kind is refused.

This module imports numpy only; the torch kind lives in `hamlet_server.torch_ops` and is imported when a torch
backend is loaded, so a server with ``--backend onnx`` serving ``.onnx`` files never imports torch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

__all__ = [
    "NUMPY",
    "NUMPY_STATE_PREFIX",
    "TORCH_STATE_PREFIX",
    "ArrayOps",
    "GeneratorStateError",
    "NumpyOps",
    "generator_kind",
    "ops_for",
]

NUMPY_STATE_PREFIX = b"numpy-pcg64:"
"""Start of a numpy generator's state in a snapshot; JSON of ``bit_generator.state`` follows."""
TORCH_STATE_PREFIX = b"torch-cpu:"
"""Start of a torch CPU generator's state in a snapshot; ``Generator.get_state()``'s bytes follow. A state
without a known prefix (snapshots taken before the prefix existed) is read as a torch state."""


class GeneratorStateError(ValueError):
    """A snapshot's rng_state is not a generator state of this server's kind. ``mismatch`` is True when it is a
    valid state of the other kind (another backend took it), False when it is no state at all."""

    def __init__(self, message: str, *, mismatch: bool) -> None:
        super().__init__(message)
        self.mismatch = mismatch


def generator_kind(state: bytes) -> str:
    """``"numpy"`` or ``"torch"``: which generator a snapshot's ``rng_state`` belongs to (by its prefix)."""
    return "numpy" if state.startswith(NUMPY_STATE_PREFIX) else "torch"


class ArrayOps(Protocol):
    """What the batcher and the hidden-state table do to a backend's arrays. Index arrays are int64 ``[B]``."""

    kind: str
    """``"numpy"`` or ``"torch"``."""
    device: str
    """Where the arrays live: ``"cpu"``, ``"cuda:0"``, ..."""

    def from_host(self, array: np.ndarray) -> Any:
        """A numpy array as this kind's array on `device` (no copy where none is needed)."""
        ...

    def to_host(self, array: Any) -> np.ndarray:
        """This kind's array as a float32 (or its own dtype) numpy array on the host."""
        ...

    def index(self, rows: Sequence[int]) -> Any:
        """Row indices ``[B]`` int64 on `device`."""
        ...

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """float32 zeros on `device`."""
        ...

    def concat(self, parts: Sequence[Any], axis: int) -> Any: ...

    def take(self, table: Any, index: Any) -> Any:
        """A copy of rows ``index [B]`` of ``table [N, H]`` -> ``[B, H]``."""
        ...

    def put(self, table: Any, index: Any, rows: Any) -> None:
        """Write ``rows [B, H]`` into rows ``index [B]`` of ``table`` in place."""
        ...

    def zero_rows(self, rows: Any, mask: Any) -> None:
        """Zero in place the rows of ``rows [B, H]`` where ``mask [B]`` bool (this kind, on `device`) is true."""
        ...

    def nbytes(self, array: Any) -> int: ...

    def inference(self) -> contextlib.AbstractContextManager[Any]:
        """The context the backend's forward runs in (torch: ``inference_mode``)."""
        ...

    def new_generator(self, seed: int | None) -> Any:
        """A generator seeded with ``seed``; None for None (fresh entropy per draw)."""
        ...

    def explore(
        self, q_values: np.ndarray, epsilon: float, action_mask: np.ndarray | None, generator: Any
    ) -> np.ndarray:
        """Masked epsilon-greedy over host ``q_values [B, A]`` -> ``[B]`` int64, drawing from ``generator``."""
        ...

    def generator_state(self, generator: Any) -> bytes:
        """The generator's state with this kind's prefix (`NUMPY_STATE_PREFIX`, `TORCH_STATE_PREFIX`)."""
        ...

    def restore_generator(self, state: bytes) -> Any:
        """A generator continuing ``state``; `GeneratorStateError` if it is not a state of this kind."""
        ...


class NumpyOps:
    """`ArrayOps` on numpy arrays in host memory (the onnxruntime backend)."""

    kind = "numpy"
    device = "cpu"

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return array

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return array

    def index(self, rows: Sequence[int]) -> np.ndarray:
        return np.asarray(rows, dtype=np.int64)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    def concat(self, parts: Sequence[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate(parts, axis=axis)

    def take(self, table: np.ndarray, index: np.ndarray) -> np.ndarray:
        rows: np.ndarray = table[index]  # fancy indexing copies
        return rows

    def put(self, table: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:
        table[index] = rows

    def zero_rows(self, rows: np.ndarray, mask: np.ndarray) -> None:
        rows[mask] = 0.0

    def nbytes(self, array: np.ndarray) -> int:
        return int(array.nbytes)

    def inference(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def new_generator(self, seed: int | None) -> np.random.Generator | None:
        return None if seed is None else np.random.default_rng(seed)

    def explore(
        self, q_values: np.ndarray, epsilon: float, action_mask: np.ndarray | None, generator: Any
    ) -> np.ndarray:
        from townlet.inference.onnx_runtime import epsilon_greedy_numpy  # the rule of OnnxModel.predict

        rng = generator if generator is not None else np.random.default_rng()
        actions: np.ndarray = epsilon_greedy_numpy(q_values, epsilon, action_mask, rng)
        return actions

    def generator_state(self, generator: np.random.Generator) -> bytes:
        return NUMPY_STATE_PREFIX + json.dumps(generator.bit_generator.state, sort_keys=True).encode()

    def restore_generator(self, state: bytes) -> np.random.Generator:
        if generator_kind(state) != "numpy":
            raise GeneratorStateError(
                f"{len(state)} bytes of a torch generator state; this server (--backend onnx) draws with numpy "
                "generators: resume the episode on a replica with the backend that took the snapshot",
                mismatch=True,
            )
        try:
            loaded = json.loads(state[len(NUMPY_STATE_PREFIX) :])
            if not isinstance(loaded, dict) or loaded.get("bit_generator") != "PCG64":
                raise ValueError("not a PCG64 state")
            generator = np.random.Generator(np.random.PCG64())
            generator.bit_generator.state = loaded
        except (ValueError, TypeError, KeyError, OverflowError):
            raise GeneratorStateError(
                f"{len(state)} bytes that are not a numpy PCG64 generator state", mismatch=False
            ) from None
        return generator


NUMPY = NumpyOps()


def ops_for(backend: Any) -> ArrayOps:
    """The `ArrayOps` of a backend's ``array_kind`` ("numpy", or "torch" when it names none)."""
    kind = getattr(backend, "array_kind", "torch")
    if kind == "numpy":
        return NUMPY
    if kind != "torch":
        raise ValueError(f"a backend's array_kind must be 'numpy' or 'torch', got {kind!r}")
    from hamlet_server.torch_ops import TorchOps

    return TorchOps(str(backend.device))
