"""StepBatcher: one forward for the pending work of every stream and Predict call on one model version.

Callers `await batcher.submit(item)`. The first item queued while the batcher is idle schedules a flush
for right after the callbacks already due on the event loop (so every handler woken in the same loop
iteration gets in), or `max_delay_us` later when that is set. The flush takes up to `max_batch` rows and
runs one forward, on a worker thread (or inline on the loop when no executor is given or the batch has at
most `inline_rows` rows): hidden states
are gathered from the model version's `HiddenStateTable` (in the backend's own arrays), the network
runs once, the new states are scattered back, and each item gets its own rows of actions and Q-values.

Items carry numpy arrays on the host (observations, masks, resets, explicit states); the batch crosses to the
backend's array kind once (`hamlet_server.array_ops`: numpy for onnxruntime, torch for torch/CUDA), and the
Q-values come back to the host once. Exploration draws with the item's generator, of the backend's kind.
Items are never split; one larger than `max_batch` runs alone. While a forward runs, new work queues up
and forms the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hamlet_server.array_ops import ops_for
from hamlet_server.backends import Backend
from hamlet_server.sessions import HiddenStateTable

__all__ = ["BatchResult", "BatchStats", "StepBatcher", "WorkItem"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkItem:
    """One request's rows: a stream step (`slots` set) or a Predict call (`hidden` explicit or None)."""

    obs: np.ndarray  # [b, obs_dim] float32, host
    epsilon: float = 0.0
    action_mask: np.ndarray | None = None  # [b, A] bool, host
    generator: Any = None  # of the backend's kind (ArrayOps.new_generator): torch or numpy Generator
    slot_index: Any = None  # [b] int64 in the backend's arrays (ArrayOps.index): rows of the hidden table
    slot_limit: int = 0  # 1 + max(slot_index), known on the host (no device read-back per step)
    reset: np.ndarray | None = None  # [b] bool, host: rows whose state is zeroed before the forward
    hidden: tuple[np.ndarray, np.ndarray] | None = None  # explicit (h, c) [1, b, H] float32, host
    return_hidden: bool = False
    is_cancelled: Callable[[], bool] = field(default=lambda: False)
    future: asyncio.Future[BatchResult] | None = None
    queued_at: float = 0.0  # time.perf_counter() when submitted

    @property
    def rows(self) -> int:
        return int(self.obs.shape[0])


@dataclass(frozen=True)
class BatchResult:
    actions: np.ndarray  # [b] int64: a view of the batch's actions
    q_values: np.ndarray  # [b, A] float32: a view of the batch's Q-values (one device->host copy per batch)
    hidden: tuple[np.ndarray, np.ndarray] | None  # [1, b, H] each, float32 on the host, when asked for
    batch_size: int  # rows in the forward this item rode in


@dataclass(frozen=True)
class BatchStats:
    """What one forward cost, for metrics: reported by `StepBatcher` through `on_batch`."""

    rows: int  # rows in the forward
    forward_seconds: float  # gather + network + scatter + copy of the results to the host
    longest_wait_seconds: float  # the batch's oldest item: from submit() until the forward began


class StepBatcher:
    """Batches the work of one model version. Start with `start()`, stop with `await close()`."""

    def __init__(
        self,
        model: Backend,
        executor: Executor | None,
        *,
        max_batch: int = 256,
        max_delay_us: int = 0,
        inline_rows: int = 0,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.model = model
        self.inline_rows = inline_rows
        self.max_batch = max_batch
        self.max_delay = max_delay_us / 1e6
        self._executor = executor
        self._on_batch = on_batch
        self._pending: deque[WorkItem] = deque()
        self._pending_rows = 0
        self._scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self._busy = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ops = ops_for(model)
        self.device = self.ops.device  # cached: HamletModel.device walks the parameters
        self.table = HiddenStateTable(model.hidden_dim or 0, self.ops) if model.is_recurrent else None
        self._net_forward = model.forward  # HamletModel.forward adds no guard of its own under inference_mode
        self.batches = 0
        self.rows = 0
        self._compact_later: Callable[[], int] | None = None  # a shrink waiting for the forward in flight

    def start(self) -> None:
        """Bind to the running event loop (idempotent)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    async def submit(self, item: WorkItem) -> BatchResult:
        """Queue `item` and wait for its rows of the batched forward."""
        if self._closed or self._loop is None:
            raise RuntimeError("batcher is not running")
        item.future = self._loop.create_future()
        item.queued_at = time.perf_counter()
        self._pending.append(item)
        self._pending_rows += item.rows
        self._schedule()
        return await item.future

    async def close(self) -> None:
        """Stop batching; queued items fail with CancelledError (a forward in flight still completes)."""
        self._closed = True
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        while self._pending:
            item = self._pending.popleft()
            if item.future is not None and not item.future.done():
                item.future.cancel()
        self._pending_rows = 0

    def compact(self, rows_in_use: Callable[[], int]) -> None:
        """Shrink the hidden-state table if the rows in use (read when the shrink happens) fill at most a
        quarter of it (see `HiddenStateTable.shrink_to_fit`). Runs on the event loop, deferred to the end
        of the forward in flight: that forward is the only code that touches the table off the loop."""
        if self.table is None:
            return
        if self._busy:
            self._compact_later = rows_in_use
        elif self.table.shrink_to_fit(rows_in_use()):
            log.debug("hidden-state table shrunk to %d rows", self.table.capacity)

    def read_rows(self, index: Any) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of the table rows ``index`` as (h, c) ``[n, H]``: for a stream between its steps (its
        rows are written only by its own steps; a concurrent resize keeps their values)."""
        assert self.table is not None
        return self.table.read_rows(index)

    @property
    def mean_batch(self) -> float:
        return self.rows / self.batches if self.batches else 0.0

    def _schedule(self) -> None:
        """Arrange one flush: right after the callbacks already due (so that every handler woken in this
        loop iteration gets in), or after `max_delay` when waiting may fill the batch."""
        if self._busy or not self._pending or self._closed or self._loop is None:
            return
        full = self._pending_rows >= self.max_batch
        if self._scheduled is not None:
            if full and isinstance(self._scheduled, asyncio.TimerHandle):
                self._scheduled.cancel()  # the batch is full: do not wait for the deadline
                self._scheduled = self._loop.call_soon(self._flush)
            return
        if self.max_delay > 0 and not full:
            self._scheduled = self._loop.call_later(self.max_delay, self._flush)
        else:
            self._scheduled = self._loop.call_soon(self._flush)

    def _take(self) -> list[WorkItem]:
        """Up to `max_batch` rows of live items, whole items only (the first one always)."""
        batch: list[WorkItem] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            if not (item.future is not None and not item.future.done() and not item.is_cancelled()):
                self._pending.popleft()
                self._pending_rows -= item.rows
                continue
            if batch and rows + item.rows > self.max_batch:
                break
            self._pending.popleft()
            self._pending_rows -= item.rows
            batch.append(item)
            rows += item.rows
        return batch

    def _flush(self) -> None:
        self._scheduled = None
        batch = self._take()
        if not batch or self._loop is None:
            return
        self._busy = True
        # A small batch runs right here on the loop: the hop to the worker thread and back costs more than
        # it saves when there is little else to do (a lone stream). Larger batches keep the loop free.
        if self._executor is None or sum(item.rows for item in batch) <= self.inline_rows:
            try:
                results = self._forward(batch)
            except Exception as exc:  # a bug or a device failure: fail this batch, keep serving
                self._finish(batch, None, exc)
            else:
                self._finish(batch, results, None)
            return
        future = self._loop.run_in_executor(self._executor, self._forward, batch)
        future.add_done_callback(lambda done: self._finish_future(batch, done))

    def _finish_future(self, batch: list[WorkItem], done: asyncio.Future[list[BatchResult]]) -> None:
        if done.cancelled():
            self._finish(batch, None, None)
        elif done.exception() is not None:
            self._finish(batch, None, done.exception())
        else:
            self._finish(batch, done.result(), None)

    def _finish(self, batch: list[WorkItem], results: list[BatchResult] | None, error: BaseException | None) -> None:
        """Hand each item its result (or the batch's error; neither: cancelled), then schedule the next."""
        self._busy = False
        if self._compact_later is not None:
            rows_in_use, self._compact_later = self._compact_later, None
            self.compact(rows_in_use)
        if error is not None:
            log.error("forward of a batch of %d items failed: %r", len(batch), error, exc_info=error)
        for i, item in enumerate(batch):
            if item.future is None or item.future.done():
                continue
            if results is not None:
                item.future.set_result(results[i])
            elif error is not None:
                item.future.set_exception(error)
            else:
                item.future.cancel()
        self._schedule()

    def _forward(self, batch: list[WorkItem]) -> list[BatchResult]:
        """Runs on the worker thread (or inline): one gather, one forward, one scatter, one copy of the
        results to the host, then per item only views and its own exploration draws."""
        began = time.perf_counter()
        ops = self.ops
        total = sum(item.rows for item in batch)
        obs = np.concatenate([item.obs for item in batch]) if len(batch) > 1 else batch[0].obs
        hidden = self._gather(batch) if self.table is not None else None
        with ops.inference():
            q, new_hidden = self._net_forward(ops.from_host(obs), hidden)
        if self.table is not None and new_hidden is not None:
            self._scatter(batch, new_hidden)
        q_np = ops.to_host(q)
        greedy = q_np.argmax(axis=1)  # first maximum, like torch.argmax
        h_host = c_host = None
        if new_hidden is not None and any(item.return_hidden for item in batch):
            h_host, c_host = ops.to_host(new_hidden[0]), ops.to_host(new_hidden[1])
        results = []
        start = 0
        for item in batch:
            stop = start + item.rows
            if item.epsilon > 0.0 or item.action_mask is not None:
                actions = ops.explore(q_np[start:stop], item.epsilon, item.action_mask, item.generator)
            else:
                actions = greedy[start:stop]
            hid = None
            if item.return_hidden and h_host is not None and c_host is not None:
                hid = (h_host[:, start:stop], c_host[:, start:stop])
            results.append(BatchResult(actions, q_np[start:stop], hid, total))
            start = stop
        self.batches += 1
        self.rows += total
        if self._on_batch is not None:
            # items leave the queue oldest first: batch[0] waited longest (one figure per batch, not per item:
            # a histogram observation per item would cost ~0.8 us x 256 on the forward path)
            self._on_batch(BatchStats(total, time.perf_counter() - began, began - batch[0].queued_at))
        return results

    def _gather(self, batch: list[WorkItem]) -> tuple[Any, Any]:
        """(h, c) ``[1, rows, H]`` for the batch: one take over the table when every item is a stream step
        reading its rows (the common case), else item by item."""
        assert self.table is not None
        table, ops = self.table, self.ops
        limit = max((item.slot_limit for item in batch if item.slot_index is not None), default=0)
        table.ensure_capacity(limit)
        if all(item.slot_index is not None and item.hidden is None for item in batch):
            index = self._batch_index(batch)
            reset = None
            if any(item.reset is not None for item in batch):
                parts = [item.reset if item.reset is not None else np.zeros(item.rows, dtype=bool) for item in batch]
                reset = ops.from_host(parts[0] if len(parts) == 1 else np.concatenate(parts))
            return table.gather(index, reset)
        parts_h, parts_c = [], []
        for item in batch:
            if item.hidden is not None:  # explicit state: a Predict call, or a resumed stream's first step
                h, c = ops.from_host(item.hidden[0]), ops.from_host(item.hidden[1])
            elif item.slot_index is not None:
                reset = ops.from_host(item.reset) if item.reset is not None else None
                h, c = table.gather(item.slot_index, reset)
            else:
                h = c = ops.zeros((1, item.rows, table.hidden_dim))
            parts_h.append(h)
            parts_c.append(c)
        if len(batch) == 1:
            return parts_h[0], parts_c[0]
        return ops.concat(parts_h, axis=1), ops.concat(parts_c, axis=1)

    def _scatter(self, batch: list[WorkItem], new_hidden: tuple[Any, Any]) -> None:
        """Write each stream step's new (h, c) into its rows: one put when every item is one."""
        assert self.table is not None
        if all(item.slot_index is not None for item in batch):
            self.table.scatter(self._batch_index(batch), new_hidden[0], new_hidden[1])
            return
        start = 0
        for item in batch:
            stop = start + item.rows
            if item.slot_index is not None:
                self.table.scatter(item.slot_index, new_hidden[0][:, start:stop], new_hidden[1][:, start:stop])
            start = stop

    def _batch_index(self, batch: list[WorkItem]) -> Any:
        indices = [item.slot_index for item in batch]
        return indices[0] if len(indices) == 1 else self.ops.concat(indices, axis=0)
