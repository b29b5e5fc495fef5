"""StepBatcher without a network: one forward for many items, per-item results equal solo forwards,
max_batch respected, cancelled items skipped, per-stream state kept in the table."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from hamlet_server.batcher import StepBatcher, WorkItem
from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.inference import HamletModel

torch.set_num_threads(1)
T = torch.from_numpy


def _rand(*shape: int) -> np.ndarray:
    """float32 uniform [0, 1): what the codec hands the batcher (numpy on the host)."""
    return np.random.default_rng().random(shape, dtype=np.float32)


class _Counting:
    """Wraps a HamletModel and records the batch size of every forward."""

    def __init__(self, model):
        self.model = model
        self.calls: list[int] = []
        for name in ("is_recurrent", "hidden_dim", "device", "obs_dim", "action_dim"):
            setattr(self, name, getattr(model, name))

    def forward(self, obs, hidden=None):
        self.calls.append(int(obs.shape[0]))
        return self.model.forward(obs, hidden)


@pytest.fixture
def executor():
    ex = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,))
    yield ex
    ex.shutdown()


def _mlp():
    torch.manual_seed(0)
    return _Counting(HamletModel(SimpleQNetwork(obs_dim=10, action_dim=4)))


def _lstm():
    torch.manual_seed(0)
    net = RecurrentSpatialQNetwork(action_dim=6, window_size=3, num_meters=8, num_affordance_types=14, hidden_dim=16)
    return _Counting(HamletModel(net))


async def test_queued_items_share_one_forward_and_get_their_own_rows(executor):
    model = _mlp()
    batcher = StepBatcher(model, executor, max_batch=64, max_delay_us=20_000)
    batcher.start()
    items = [WorkItem(_rand(n, 10)) for n in (1, 3, 2)]
    results = await asyncio.gather(*(batcher.submit(item) for item in items))
    assert model.calls == [6]
    for item, result in zip(items, results, strict=True):
        solo = model.model.forward(T(item.obs))[0]
        torch.testing.assert_close(torch.from_numpy(result.q_values), solo, rtol=1e-6, atol=1e-6)
        assert (result.actions == result.q_values.argmax(1)).all() and result.batch_size == 6
    await batcher.close()


async def test_max_batch_splits_between_items_never_inside_one(executor):
    model = _mlp()
    batcher = StepBatcher(model, executor, max_batch=4, max_delay_us=20_000)
    batcher.start()
    sizes = (3, 3, 2, 9)
    await asyncio.gather(*(batcher.submit(WorkItem(_rand(n, 10))) for n in sizes))
    assert sorted(model.calls) == [2, 3, 3, 9] or sorted(model.calls) == [3, 5, 9]
    assert sum(model.calls) == sum(sizes) and all(c <= 4 or c == 9 for c in model.calls)
    assert batcher.mean_batch == sum(sizes) / len(model.calls)
    await batcher.close()


async def test_cancelled_items_are_skipped(executor):
    model = _mlp()
    batcher = StepBatcher(model, executor, max_batch=64, max_delay_us=50_000)
    batcher.start()
    dead = WorkItem(_rand(5, 10), is_cancelled=lambda: True)
    live = WorkItem(_rand(2, 10))
    dead_task = asyncio.ensure_future(batcher.submit(dead))
    result = await batcher.submit(live)
    assert model.calls == [2] and result.q_values.shape == (2, 4)
    dead_task.cancel()
    await batcher.close()


async def test_recurrent_state_lives_in_the_table_per_slot(executor):
    model = _lstm()
    batcher = StepBatcher(model, executor, max_batch=64, max_delay_us=0)
    batcher.start()
    obs_dim = model.obs_dim
    a_slots, b_slots = torch.tensor([0, 1]), torch.tensor([2])
    hidden_a = hidden_b = None
    for t in range(4):
        obs_a, obs_b = _rand(2, obs_dim), _rand(1, obs_dim)
        reset = np.ones(2, dtype=bool) if t == 0 else None
        ra, rb = await asyncio.gather(
            batcher.submit(WorkItem(obs_a, slot_index=a_slots, slot_limit=2, reset=reset)),
            batcher.submit(
                WorkItem(obs_b, slot_index=b_slots, slot_limit=3, reset=np.ones(1, dtype=bool) if t == 0 else None)
            ),
        )
        qa, hidden_a = model.model.forward(T(obs_a), hidden_a)
        qb, hidden_b = model.model.forward(T(obs_b), hidden_b)
        torch.testing.assert_close(torch.from_numpy(ra.q_values), qa, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.from_numpy(rb.q_values), qb, rtol=1e-5, atol=1e-6)
    assert model.calls == [3, 3, 3, 3]  # both streams rode in one forward at every step
    torch.testing.assert_close(batcher.table.h[2], hidden_b[0][0, 0], rtol=1e-5, atol=1e-6)
    await batcher.close()


async def test_explicit_hidden_is_returned_and_the_table_untouched(executor):
    model = _lstm()
    batcher = StepBatcher(model, executor)
    batcher.start()
    obs = _rand(3, model.obs_dim)
    hidden = (torch.randn(1, 3, 16).numpy(), torch.randn(1, 3, 16).numpy())
    result = await batcher.submit(WorkItem(obs, hidden=hidden, return_hidden=True))
    q, new_hidden = model.model.forward(T(obs), (T(hidden[0]), T(hidden[1])))
    assert torch.equal(torch.from_numpy(result.q_values), q) and torch.equal(T(result.hidden[0]), new_hidden[0])
    assert torch.count_nonzero(batcher.table.h) == 0
    await batcher.close()


class _ThreadRecording(_Counting):
    """Also records which thread ran each forward."""

    def __init__(self, model):
        super().__init__(model)
        self.threads: list[str] = []

    def forward(self, obs, hidden=None):
        import threading

        self.threads.append(threading.current_thread().name)
        return super().forward(obs, hidden)


async def test_small_batches_run_inline_larger_ones_on_the_worker(executor):
    import threading

    model = _ThreadRecording(_mlp().model)
    batcher = StepBatcher(model, executor, max_batch=64, inline_rows=2)
    batcher.start()
    await batcher.submit(WorkItem(_rand(2, 10)))  # 2 rows <= inline_rows: on the event loop's thread
    await batcher.submit(WorkItem(_rand(3, 10)))  # 3 rows: on the worker thread
    assert model.threads[0] == threading.current_thread().name
    assert model.threads[1] != threading.current_thread().name
    await batcher.close()


async def test_table_grows_to_the_slot_limit_the_item_declares(executor):
    model = _lstm()
    batcher = StepBatcher(model, executor, max_batch=64)
    batcher.start()
    assert batcher.table is not None and batcher.table.capacity < 101
    obs = _rand(1, model.obs_dim)
    result = await batcher.submit(
        WorkItem(obs, slot_index=torch.tensor([100]), slot_limit=101, reset=np.ones(1, dtype=bool))
    )
    assert batcher.table.capacity >= 101
    torch.testing.assert_close(torch.from_numpy(result.q_values), model.model.forward(T(obs))[0], rtol=1e-5, atol=1e-6)
    await batcher.close()
