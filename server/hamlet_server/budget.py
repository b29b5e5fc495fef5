"""The in-flight budget: a bound on the request bytes that calls in progress hold across the whole server.

gRPC's `--max-message-mb` bounds one message; nothing else bounds how many of them are decoded at once. 32
concurrent 15 MB Predicts took a server from 445 to 962 MB. `InflightBudget` counts the bytes of every
Predict call in progress (the whole message, from the moment gRPC hands it to the deserializer: one over the
budget is not even parsed) and the tensor bytes of every stream step being served (stream messages are read
one at a time, so they cannot pile up); one that would push the total past the budget is refused
(RESOURCE_EXHAUSTED, reason ``INFLIGHT_BUDGET``) before it is decoded, and its bytes are given back when it
ends, however it ends:

    budget = InflightBudget(256 * 2**20)
    with budget.hold(tensor_bytes(request.observations, most=max_message_bytes)):  # InflightBudgetError
        ...                                      # decode, batch, answer; released on return, error or cancel
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hamlet_client.proto import tensor_pb2

__all__ = ["InflightBudget", "InflightBudgetError", "tensor_bytes"]

_MIB = 1024 * 1024
_ITEM_SIZE = {tensor_pb2.DATA_TYPE_FLOAT32: 4, tensor_pb2.DATA_TYPE_INT64: 8, tensor_pb2.DATA_TYPE_BOOL: 1}


class InflightBudgetError(RuntimeError):
    """A request would push the bytes in flight past `--max-inflight-mb` (RESOURCE_EXHAUSTED, INFLIGHT_BUDGET)."""


def tensor_bytes(*tensors: Any, most: int) -> int:
    """The bytes `hamlet.v1.Tensor` messages declare (shape x dtype size), read without touching their data
    (upb copies a bytes field on every access: 3.4 ms for 15 MB). A tensor declaring more than `most` (the
    message size limit: it cannot carry that much), or an unknown dtype, counts 0: decoding refuses it."""
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        declared = math.prod(tensor.shape) * _ITEM_SIZE.get(tensor.dtype, 0)
        total += declared if 0 <= declared <= most else 0
    return total


class InflightBudget:
    """Bytes held by the calls in progress, bounded by `limit`; thread-safe (gRPC may deserialize off the loop)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight budget must be >= 1 byte, got {limit}")
        self.limit = limit
        self.in_use = 0
        self.refused = 0
        self._lock = threading.Lock()

    def acquire(self, nbytes: int) -> None:
        """Count `nbytes` as in flight; InflightBudgetError (nothing counted) if that passes the limit."""
        with self._lock:
            if self.in_use + nbytes > self.limit:
                self.refused += 1
                raise InflightBudgetError(self._refusal(nbytes))
            self.in_use += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.in_use = max(0, self.in_use - nbytes)

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold `nbytes` for the body of the `with`; given back however it ends (return, error, cancel)."""
        self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    def _refusal(self, nbytes: int) -> str:
        limit = f"{self.limit / _MIB:g} MiB"
        if nbytes > self.limit:
            return (
                f"the request carries {nbytes / _MIB:.1f} MiB, more than the server's whole in-flight "
                f"budget of {limit} (--max-inflight-mb); split it into smaller batches"
            )
        return (
            f"the request carries {nbytes / _MIB:.1f} MiB and calls in progress already hold "
            f"{self.in_use / _MIB:.1f} MiB of the server's in-flight budget of {limit} (--max-inflight-mb); "
            "retry shortly or send smaller batches"
        )
