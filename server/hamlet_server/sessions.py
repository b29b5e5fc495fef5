"""Per-stream state: which rows of a model version's hidden-state table belong to which stream.

- `SlotAllocator` hands out row indices of one model version's `[slots, H]` table (pure bookkeeping). Rows
  freed at the top give the high-water mark back, so the table can shrink after a burst.
- `HiddenStateTable` owns the (h, c) rows in the backend's own arrays (numpy for onnxruntime, torch on the
  model's device), through `hamlet_server.array_ops`; only the batcher touches it. It grows by doubling and
  shrinks with hysteresis (see `StepBatcher.compact`).
- `Session` is the started part of a stream: its model version, rows and random stream. The stream's whole
  life (open, start, limits, timeouts, end reasons, freeing) belongs to `hamlet_server.streams`.
- `check_step_index` and `check_num_envs` are the rules for a step index and an environment count, shared by a
  fresh start, every step and a resumed snapshot.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hamlet_server.array_ops import ArrayOps

if TYPE_CHECKING:
    from hamlet_server.repository import ServedModel

__all__ = [
    "MAX_STEP_INDEX",
    "EnvLimitError",
    "HiddenStateTable",
    "Session",
    "SlotAllocator",
    "StepLimitError",
    "check_num_envs",
    "check_step_index",
]

MAX_STEP_INDEX = 2**53
"""Steps one episode may take, counted across resumes: a step's index is in ``0..MAX_STEP_INDEX - 1``. Far
below int64's limit (the wire's step_index), so the counter can never overflow, and exact as a float64 (JSON
clients); at a million steps a second an episode reaches it after 285 years."""


class StepLimitError(ValueError):
    """A step index outside ``0..MAX_STEP_INDEX - 1`` (OUT_OF_RANGE STEP_LIMIT for a step; BAD_SNAPSHOT resumed)."""


class EnvLimitError(ValueError):
    """An environment count outside ``1..--max-envs`` (INVALID_ARGUMENT, reason ENV_LIMIT)."""


def check_step_index(index: int, name: str) -> int:
    """The rule for the index of the next step (fresh, stepping or resumed): ``0 <= index < MAX_STEP_INDEX``."""
    if not 0 <= index < MAX_STEP_INDEX:
        raise StepLimitError(
            f"{name}: expected a step index in 0..{MAX_STEP_INDEX - 1} (2**53 - 1), got {index}; an episode "
            "takes at most 2**53 steps: start a new episode"
        )
    return index


def check_num_envs(num_envs: int, max_envs: int, name: str) -> int:
    """The rule for the environments one stream drives: ``1..max_envs`` (--max-envs)."""
    if not 1 <= num_envs <= max_envs:
        raise EnvLimitError(f"{name}: expected 1..{max_envs} environments (--max-envs), got {num_envs}")
    return num_envs


class SlotAllocator:
    """Row indices of a hidden-state table: the lowest free rows first, so the table stays compact."""

    def __init__(self) -> None:
        self._heap: list[int] = []  # free rows below the high-water mark (may hold stale entries)
        self._free: set[int] = set()
        self._next = 0
        self._lock = threading.Lock()

    def allocate(self, n: int) -> list[int]:
        with self._lock:
            taken: list[int] = []
            while self._heap and len(taken) < n:
                row = heapq.heappop(self._heap)
                if row in self._free:  # skip rows trimmed off the top since they were freed
                    self._free.discard(row)
                    taken.append(row)
            fresh = list(range(self._next, self._next + n - len(taken)))
            self._next += len(fresh)
            return taken + fresh

    def free(self, slots: list[int]) -> None:
        with self._lock:
            for row in slots:
                self._free.add(row)
                heapq.heappush(self._heap, row)
            while self._next > 0 and (self._next - 1) in self._free:  # give back the free top
                self._next -= 1
                self._free.discard(self._next)
            if not self._free:
                self._heap.clear()

    @property
    def in_use(self) -> int:
        return self._next - len(self._free)

    @property
    def high_water(self) -> int:
        """1 + the highest row in use (0 when none is): the rows the table must keep."""
        return self._next


class HiddenStateTable:
    """(h, c) rows `[capacity, H]` in `ops`' arrays; grows by doubling. Not thread-safe: one worker owns it."""

    MIN_CAPACITY = 64

    def __init__(self, hidden_dim: int, ops: ArrayOps, capacity: int = MIN_CAPACITY) -> None:
        self.hidden_dim = hidden_dim
        self.ops = ops
        self.h: Any = ops.zeros((capacity, hidden_dim))
        self.c: Any = ops.zeros((capacity, hidden_dim))

    @property
    def capacity(self) -> int:
        return int(self.h.shape[0])

    @property
    def nbytes(self) -> int:
        return 2 * self.ops.nbytes(self.h)

    def ensure_capacity(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        self._resize(max(rows, 2 * self.capacity))

    def shrink_to_fit(self, rows_in_use: int) -> bool:
        """Hysteresis: shrink to twice the rows in use (at least MIN_CAPACITY) once they fill at most a
        quarter of the table, so a table at steady use never flaps between sizes. True if it shrank."""
        target = max(self.MIN_CAPACITY, 2 * rows_in_use)
        if self.capacity <= self.MIN_CAPACITY or 4 * rows_in_use > self.capacity or target >= self.capacity:
            return False
        self._resize(target)
        return True

    def _resize(self, capacity: int) -> None:
        keep = min(capacity, self.capacity)
        for name in ("h", "c"):
            new = self.ops.zeros((capacity, self.hidden_dim))
            new[:keep] = getattr(self, name)[:keep]
            setattr(self, name, new)

    def gather(self, index: Any, reset: Any | None) -> tuple[Any, Any]:
        """Rows `index` [B] as (h, c) each `[1, B, H]`; rows where `reset` [B] bool (both in `ops`' kind) is
        true come back as zeros. The table is not written."""
        h = self.ops.take(self.h, index)
        c = self.ops.take(self.c, index)
        if reset is not None:
            self.ops.zero_rows(h, reset)
            self.ops.zero_rows(c, reset)
        return h[None], c[None]

    def scatter(self, index: Any, h: Any, c: Any) -> None:
        """Write `h`, `c` `[1, B, H]` (or `[B, H]`) into rows `index` [B]."""
        self.ops.put(self.h, index, h.reshape(-1, self.hidden_dim))
        self.ops.put(self.c, index, c.reshape(-1, self.hidden_dim))

    def read_rows(self, index: Any) -> tuple[Any, Any]:
        """Host (numpy) copies of rows `index` as (h, c) `[B, H]`."""
        return self.ops.to_host(self.ops.take(self.h, index)), self.ops.to_host(self.ops.take(self.c, index))


@dataclass(eq=False)
class Session:
    """The started part of a stream: the model version it runs on, its table rows and its random stream."""

    model: ServedModel
    num_envs: int
    epsilon: float
    generator: Any  # the backend's kind (`ArrayOps.new_generator`): torch or numpy Generator, or None
    slots: list[int]
    slot_index: Any  # [num_envs] int64 rows in the backend's arrays (`ArrayOps.index`); None without rows
    # 1 + the highest table row (0 without rows): known on the host, so the batcher sizes the table
    # without reading `slot_index` back from the device on every step.
    slot_limit: int = 0
    step_index: int = 0
    fresh: bool = True  # the first step zeroes every row (rows may be reused from a closed stream)
    closed: bool = False
    snapshot_every: int = 0  # attach a snapshot to every N-th step result (0: never)
    # (h, c) `[1, num_envs, H]` the next step starts from instead of the table rows (a resumed episode);
    # that step's forward writes them into the rows.
    pending_hidden: tuple[Any, Any] | None = None  # numpy float32 on the host

    @classmethod
    def open(cls, model: ServedModel, num_envs: int, epsilon: float, seed: int | None) -> Session:
        """Take `num_envs` rows of `model`'s table (recurrent models only) and seed the random stream."""
        ops = model.batcher.ops
        generator = ops.new_generator(seed)
        slots: list[int] = []
        index = None
        if model.is_recurrent:
            slots = model.slots.allocate(num_envs)
            index = ops.index(slots)
        return cls(model, num_envs, epsilon, generator, slots, index, slot_limit=max(slots, default=-1) + 1)

    def close(self) -> None:
        """Give the rows back and release the model version; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.model.free_rows(self.slots)
        self.model.release()
