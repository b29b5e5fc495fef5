"""`ArrayOps` on torch tensors on the backend's device (the torch backend, CPU or CUDA).

Imported only when a torch backend is loaded (`hamlet_server.array_ops.ops_for`). Exploration is
`townlet.inference.policy.epsilon_greedy` with a CPU ``torch.Generator``, exactly what `HamletModel.predict`
draws with the same seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hamlet_server.array_ops import TORCH_STATE_PREFIX, GeneratorStateError, generator_kind
from townlet.inference.policy import epsilon_greedy

__all__ = ["TorchOps"]


class TorchOps:
    """`ArrayOps` on torch tensors on ``device``."""

    kind = "torch"

    def __init__(self, device: str) -> None:
        self.device = str(torch.device(device))
        self._device = torch.device(device)

    def from_host(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self._device, non_blocking=True)

    def to_host(self, array: torch.Tensor) -> np.ndarray:
        host: np.ndarray = array.float().cpu().numpy()
        return host

    def index(self, rows: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(rows), dtype=torch.int64, device=self._device)

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, device=self._device)

    def concat(self, parts: Sequence[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.cat(list(parts), dim=axis)

    def take(self, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return table.index_select(0, index)

    def put(self, table: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
        table.index_copy_(0, index, rows)

    def zero_rows(self, rows: torch.Tensor, mask: torch.Tensor) -> None:
        rows.masked_fill_(mask.unsqueeze(1), 0.0)

    def nbytes(self, array: torch.Tensor) -> int:
        return int(array.numel() * array.element_size())

    def inference(self) -> contextlib.AbstractContextManager[Any]:
        return torch.inference_mode()

    def new_generator(self, seed: int | None) -> torch.Generator | None:
        return None if seed is None else torch.Generator(device="cpu").manual_seed(seed)

    def explore(
        self, q_values: np.ndarray, epsilon: float, action_mask: np.ndarray | None, generator: Any
    ) -> np.ndarray:
        mask = None if action_mask is None else torch.from_numpy(action_mask)
        actions: np.ndarray = epsilon_greedy(torch.from_numpy(q_values), epsilon, mask, generator).numpy()
        return actions

    def generator_state(self, generator: torch.Generator) -> bytes:
        return TORCH_STATE_PREFIX + generator.get_state().numpy().tobytes()

    def restore_generator(self, state: bytes) -> torch.Generator:
        if generator_kind(state) != "torch":
            raise GeneratorStateError(
                f"{len(state)} bytes of a numpy generator state; this server (--backend torch) draws with torch "
                "generators: resume the episode on a replica with the backend that took the snapshot",
                mismatch=True,
            )
        raw = state[len(TORCH_STATE_PREFIX) :] if state.startswith(TORCH_STATE_PREFIX) else state
        generator = torch.Generator(device="cpu")
        try:
            generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        except (RuntimeError, ValueError):
            raise GeneratorStateError(
                f"{len(state)} bytes that are not a torch CPU generator state", mismatch=False
            ) from None
        return generator
