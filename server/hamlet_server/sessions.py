"""Per-stream state: which rows of a model version's hidden-state table belong to which stream.

- `SlotAllocator` hands out row indices of one model version's `[slots, H]` table (pure bookkeeping).
- `HiddenStateTable` owns the (h, c) rows on the model's device; only the batcher's worker thread touches it.
- `SessionTable` holds the open streams, enforces `max_sessions` and frees a stream's rows the moment it
  closes. It runs on the event loop; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hamlet_server.repository import ServedModel

__all__ = ["HiddenStateTable", "Session", "SessionLimitError", "SessionTable", "SlotAllocator"]


class SessionLimitError(RuntimeError):
    """The server already holds `max_sessions` streams (maps to RESOURCE_EXHAUSTED)."""


class SlotAllocator:
    """Row indices of a hidden-state table: the lowest free rows first, so the table stays compact."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._next = 0
        self._lock = threading.Lock()

    def allocate(self, n: int) -> list[int]:
        with self._lock:
            taken = [heapq.heappop(self._free) for _ in range(min(n, len(self._free)))]
            fresh = list(range(self._next, self._next + n - len(taken)))
            self._next += len(fresh)
            return taken + fresh

    def free(self, slots: list[int]) -> None:
        with self._lock:
            for s in slots:
                heapq.heappush(self._free, s)

    @property
    def in_use(self) -> int:
        return self._next - len(self._free)

    @property
    def high_water(self) -> int:
        return self._next


class HiddenStateTable:
    """(h, c) rows `[capacity, H]` on one device; grows by doubling. Not thread-safe: one worker owns it."""

    def __init__(self, hidden_dim: int, device: torch.device | str, capacity: int = 64) -> None:
        self.hidden_dim = hidden_dim
        self.device = torch.device(device)
        self.h = torch.zeros(capacity, hidden_dim, device=self.device)
        self.c = torch.zeros(capacity, hidden_dim, device=self.device)

    @property
    def capacity(self) -> int:
        return int(self.h.shape[0])

    def ensure_capacity(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        new_cap = max(rows, 2 * self.capacity)
        for name in ("h", "c"):
            old = getattr(self, name)
            grown = torch.zeros(new_cap, self.hidden_dim, device=self.device)
            grown[: old.shape[0]] = old
            setattr(self, name, grown)

    def gather(self, index: torch.Tensor, reset: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `index` [B] as (h, c) each `[1, B, H]`; rows where `reset` [B] is true come back as zeros."""
        h = self.h.index_select(0, index)
        c = self.c.index_select(0, index)
        if reset is not None:
            h.masked_fill_(reset.unsqueeze(1), 0.0)
            c.masked_fill_(reset.unsqueeze(1), 0.0)
        return h.unsqueeze(0), c.unsqueeze(0)

    def scatter(self, index: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> None:
        """Write `h`, `c` `[1, B, H]` (or `[B, H]`) into rows `index` [B]."""
        self.h.index_copy_(0, index, h.reshape(-1, self.hidden_dim))
        self.c.index_copy_(0, index, c.reshape(-1, self.hidden_dim))


@dataclass(eq=False)
class Session:
    """One StreamEpisode: the model version it started on, its table rows and its random stream."""

    session_id: str
    model: ServedModel
    num_envs: int
    epsilon: float
    generator: torch.Generator | None
    slots: list[int]
    slot_index: torch.Tensor | None
    # 1 + the highest table row (0 without rows): known on the host, so the batcher sizes the table
    # without reading `slot_index` back from the device on every step.
    slot_limit: int = 0
    step_index: int = 0
    fresh: bool = True  # the first step zeroes every row (rows may be reused from a closed stream)
    closed: bool = False
    last_active: float = field(default_factory=time.monotonic)
    # Set by the servicer: the stream's handler task, whether it is waiting for the client, and why the
    # server ended the stream (a status code name and message) when the client did not.
    task: asyncio.Task[Any] | None = None
    reading: bool = False
    end_reason: tuple[str, str] | None = None

    def touch(self) -> None:
        self.last_active = time.monotonic()


class SessionTable:
    """The open streams. Opening beyond `max_sessions` raises SessionLimitError; closing is idempotent."""

    def __init__(self, max_sessions: int) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def open(self, model: ServedModel, num_envs: int, epsilon: float, seed: int | None) -> Session:
        """Open a stream on `model` (whose reference the caller already holds and hands over)."""
        if len(self._sessions) >= self.max_sessions:
            raise SessionLimitError(
                f"the server holds its maximum of {self.max_sessions} streams; close one or retry later"
            )
        generator = None
        if seed is not None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
        slots: list[int] = []
        index = None
        if model.is_recurrent:
            slots = model.slots.allocate(num_envs)
            index = torch.tensor(slots, dtype=torch.int64, device=model.device)
        session_id = f"s{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        session = Session(
            session_id, model, num_envs, epsilon, generator, slots, index, slot_limit=max(slots, default=-1) + 1
        )
        self._sessions[session_id] = session
        return session

    def close(self, session_id: str) -> bool:
        """Free the stream's rows and release its model version; False if it was not open."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session.closed = True
        if session.slots:
            session.model.slots.free(session.slots)
        session.model.release()
        return True

    def expire_idle(self, ttl: float, now: float | None = None) -> list[str]:
        """Close every stream silent for more than `ttl` seconds; return their ids."""
        now = time.monotonic() if now is None else now
        expired = [sid for sid, s in self._sessions.items() if now - s.last_active > ttl]
        for sid in expired:
            self.close(sid)
        return expired

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self.close(sid)
