"""Slot allocation, the hidden-state table and the session table, without a network."""

from __future__ import annotations

import pytest
import torch

from hamlet_server.sessions import HiddenStateTable, SessionLimitError, SessionTable, SlotAllocator


class _FakeServed:
    def __init__(self, recurrent=True):
        self.is_recurrent = recurrent
        self.device = torch.device("cpu")
        self.slots = SlotAllocator()
        self.refs = 0

    def acquire(self):
        self.refs += 1
        return self

    def release(self):
        self.refs -= 1


def test_slot_allocator_reuses_the_lowest_free_rows():
    alloc = SlotAllocator()
    a, b = alloc.allocate(3), alloc.allocate(2)
    assert (a, b) == ([0, 1, 2], [3, 4])
    alloc.free(a)
    assert alloc.in_use == 2
    assert alloc.allocate(4) == [0, 1, 2, 5]
    assert alloc.high_water == 6


def test_table_gather_scatter_reset_and_grow():
    table = HiddenStateTable(hidden_dim=4, device="cpu", capacity=2)
    table.ensure_capacity(5)
    assert table.capacity >= 5
    index = torch.tensor([4, 1])
    h = torch.arange(8.0).reshape(1, 2, 4)
    table.scatter(index, h, -h)
    gh, gc = table.gather(index, None)
    assert torch.equal(gh, h) and torch.equal(gc, -h)
    gh, _ = table.gather(index, torch.tensor([True, False]))
    assert torch.equal(gh[0, 0], torch.zeros(4)) and torch.equal(gh[0, 1], h[0, 1])
    assert torch.equal(table.h[4], h[0, 0])  # gather never writes the table
    table.ensure_capacity(40)  # growth keeps the rows
    assert torch.equal(table.h[1], h[0, 1])


def test_session_table_limits_and_frees():
    served = _FakeServed()
    table = SessionTable(max_sessions=2)
    s1 = table.open(served.acquire(), num_envs=3, epsilon=0.1, seed=5)
    s2 = table.open(served.acquire(), num_envs=2, epsilon=0.0, seed=None)
    assert s1.slots == [0, 1, 2] and s2.slots == [3, 4] and s1.generator is not None and s2.generator is None
    with pytest.raises(SessionLimitError, match="maximum of 2 streams"):
        table.open(served, num_envs=1, epsilon=0.0, seed=None)
    assert table.close(s1.session_id) and not table.close(s1.session_id)
    assert s1.closed and served.slots.in_use == 2 and served.refs == 1 and len(table) == 1
    table.close_all()
    assert len(table) == 0 and served.refs == 0 and served.slots.in_use == 0


def test_feed_forward_sessions_take_no_rows_and_idle_ones_expire():
    served = _FakeServed(recurrent=False)
    table = SessionTable(max_sessions=4)
    s = table.open(served.acquire(), num_envs=8, epsilon=0.0, seed=None)
    assert s.slots == [] and s.slot_index is None
    assert table.expire_idle(ttl=10.0, now=s.last_active + 5) == []
    assert table.expire_idle(ttl=10.0, now=s.last_active + 11) == [s.session_id]
    assert len(table) == 0 and served.refs == 0
