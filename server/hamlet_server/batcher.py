"""StepBatcher: one forward for the pending work of every stream and Predict call on one model version.

Callers `await batcher.submit(item)`. A single asyncio task takes the first queued item, then everything
else already queued (and, when `max_delay_us` > 0, whatever arrives before that deadline) up to
`max_batch` rows, and runs one forward on a worker thread: hidden states are gathered from the model
version's `HiddenStateTable` (which lives on the model's device), the network runs once, the new states
are scattered back, and each item gets its own rows of actions and Q-values. Items are never split; one
larger than `max_batch` runs alone. While a forward runs, new work queues up and forms the next batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import torch

from hamlet_server.sessions import HiddenStateTable
from townlet.inference.policy import epsilon_greedy

__all__ = ["BatchResult", "StepBatcher", "WorkItem"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkItem:
    """One request's rows: a stream step (`slots` set) or a Predict call (`hidden` explicit or None)."""

    obs: torch.Tensor  # [b, obs_dim] float32, CPU
    epsilon: float = 0.0
    action_mask: torch.Tensor | None = None  # [b, A] bool, CPU
    generator: torch.Generator | None = None  # CPU
    slot_index: torch.Tensor | None = None  # [b] int64 on the model device: rows of the hidden table
    reset: torch.Tensor | None = None  # [b] bool, CPU: rows whose state is zeroed before the forward
    hidden: tuple[torch.Tensor, torch.Tensor] | None = None  # explicit (h, c) [1, b, H] for Predict
    return_hidden: bool = False
    is_cancelled: Callable[[], bool] = field(default=lambda: False)
    future: asyncio.Future[BatchResult] | None = None

    @property
    def rows(self) -> int:
        return int(self.obs.shape[0])


@dataclass(frozen=True)
class BatchResult:
    actions: torch.Tensor  # [b] int64, CPU
    q_values: torch.Tensor  # [b, A] float32, CPU
    hidden: tuple[torch.Tensor, torch.Tensor] | None  # [1, b, H] each, CPU, when asked for
    batch_size: int  # rows in the forward this item rode in


class StepBatcher:
    """Batches the work of one model version. Start with `start()`, stop with `await close()`."""

    def __init__(
        self,
        model: Any,
        executor: Executor,
        *,
        max_batch: int = 256,
        max_delay_us: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_delay = max_delay_us / 1e6
        self._executor = executor
        self._on_batch = on_batch
        self._queue: asyncio.Queue[WorkItem] = asyncio.Queue()
        self._carry: WorkItem | None = None
        self._task: asyncio.Task[None] | None = None
        self.table = HiddenStateTable(model.hidden_dim, model.device) if model.is_recurrent else None
        self.batches = 0
        self.rows = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hamlet-batcher")

    async def submit(self, item: WorkItem) -> BatchResult:
        """Queue `item` and wait for its rows of the batched forward."""
        if self._task is None or self._task.done():
            raise RuntimeError("batcher is not running")
        item.future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(item)
        return await item.future

    async def close(self) -> None:
        """Stop the batching task; queued items fail with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        pending = [self._carry] if self._carry else []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for item in pending:
            if item.future is not None and not item.future.done():
                item.future.cancel()

    @property
    def mean_batch(self) -> float:
        return self.rows / self.batches if self.batches else 0.0

    def _live(self, item: WorkItem) -> bool:
        return item.future is not None and not item.future.done() and not item.is_cancelled()

    async def _collect(self) -> list[WorkItem]:
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch = [first] if self._live(first) else []
        rows = first.rows if batch else 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay
        while rows < self.max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0 or not batch:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            if not self._live(item):
                continue
            if rows + item.rows > self.max_batch and batch:
                self._carry = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._forward, batch)
            except asyncio.CancelledError:
                for item in batch:
                    if item.future is not None and not item.future.done():
                        item.future.cancel()
                raise
            except Exception as exc:  # a bug or a device failure: fail this batch, keep serving
                log.exception("forward of a batch of %d items failed", len(batch))
                for item in batch:
                    if item.future is not None and not item.future.done():
                        item.future.set_exception(exc)
                continue
            for item, result in zip(batch, results, strict=True):
                if item.future is not None and not item.future.done():
                    item.future.set_result(result)

    def _forward(self, batch: list[WorkItem]) -> list[BatchResult]:
        """Runs on the worker thread: gather, one forward, scatter, per-item action selection."""
        device = self.model.device
        total = sum(item.rows for item in batch)
        obs = torch.cat([item.obs for item in batch]) if len(batch) > 1 else batch[0].obs
        obs = obs.to(device, non_blocking=True)
        hidden = self._gather(batch, total) if self.table is not None else None
        with torch.inference_mode():
            q, new_hidden = self.model.forward(obs, hidden)
        if self.table is not None and new_hidden is not None:
            self._scatter(batch, new_hidden)
        q_cpu = q.float().cpu()
        h_cpu = c_cpu = None
        if new_hidden is not None and any(item.return_hidden for item in batch):
            h_cpu, c_cpu = new_hidden[0].cpu(), new_hidden[1].cpu()
        greedy = q_cpu.argmax(dim=1)
        results = []
        start = 0
        for item in batch:
            stop = start + item.rows
            q_item = q_cpu[start:stop]
            if item.epsilon > 0.0 or item.action_mask is not None:
                actions = epsilon_greedy(q_item, item.epsilon, item.action_mask, item.generator)
            else:
                actions = greedy[start:stop]
            hid = None
            if item.return_hidden and h_cpu is not None and c_cpu is not None:
                hid = (h_cpu[:, start:stop], c_cpu[:, start:stop])
            results.append(BatchResult(actions, q_item, hid, total))
            start = stop
        self.batches += 1
        self.rows += total
        if self._on_batch is not None:
            self._on_batch(total)
        return results

    def _gather(self, batch: list[WorkItem], total: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.table is not None
        device = self.model.device
        parts_h, parts_c = [], []
        for item in batch:
            if item.slot_index is not None:
                self.table.ensure_capacity(int(item.slot_index.max()) + 1)
                reset = item.reset.to(device) if item.reset is not None else None
                h, c = self.table.gather(item.slot_index, reset)
            elif item.hidden is not None:
                h, c = item.hidden[0].to(device), item.hidden[1].to(device)
            else:
                h = c = torch.zeros(1, item.rows, self.table.hidden_dim, device=device)
            parts_h.append(h)
            parts_c.append(c)
        if len(batch) == 1:
            return parts_h[0], parts_c[0]
        return torch.cat(parts_h, dim=1), torch.cat(parts_c, dim=1)

    def _scatter(self, batch: list[WorkItem], new_hidden: tuple[torch.Tensor, torch.Tensor]) -> None:
        assert self.table is not None
        start = 0
        for item in batch:
            stop = start + item.rows
            if item.slot_index is not None:
                self.table.scatter(item.slot_index, new_hidden[0][:, start:stop], new_hidden[1][:, start:stop])
            start = stop
