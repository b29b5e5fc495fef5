"""Slot allocation, the hidden-state table (grow and shrink) and the stream table (limits from the moment a
stream opens, start timeout, idle timeout whichever side stalled, typed endings, freeing), without a network."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from hamlet_server.array_ops import NUMPY, ArrayOps
from hamlet_server.sessions import HiddenStateTable, SlotAllocator
from hamlet_server.streams import (
    Ending,
    EndReason,
    Phase,
    SessionLimitError,
    SlotLimitError,
    StreamTable,
    UnstartedLimitError,
)


class _FakeServed:
    def __init__(self, recurrent=True):
        self.name, self.version = "m", 3
        self.is_recurrent = recurrent
        self.device = "cpu"
        self.batcher = SimpleNamespace(ops=NUMPY)
        self.slots = SlotAllocator()
        self.refs = 0

    def acquire(self):
        self.refs += 1
        return self

    def release(self):
        self.refs -= 1

    def free_rows(self, slots):
        self.slots.free(slots)


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_slot_allocator_reuses_the_lowest_free_rows_and_gives_back_the_top():
    alloc = SlotAllocator()
    a, b = alloc.allocate(3), alloc.allocate(2)
    assert (a, b) == ([0, 1, 2], [3, 4])
    alloc.free(a)
    assert alloc.in_use == 2 and alloc.high_water == 5
    assert alloc.allocate(4) == [0, 1, 2, 5]
    assert alloc.high_water == 6
    alloc.free([5])
    assert alloc.high_water == 5  # the free top row is given back
    alloc.free([3, 4])
    assert alloc.high_water == 3 and alloc.in_use == 3  # rows 0-2 still held
    alloc.free([0, 1, 2])
    assert alloc.high_water == 0 and alloc.in_use == 0
    assert alloc.allocate(2) == [0, 1]  # no stale free entries survive the trim


def _ops(kind: str) -> ArrayOps:
    if kind == "numpy":
        return NUMPY
    from hamlet_server.torch_ops import TorchOps

    return TorchOps("cpu")


ARRAY_KINDS = ["numpy", "torch"]


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_table_gather_scatter_reset_and_grow(kind):
    ops = _ops(kind)
    table = HiddenStateTable(hidden_dim=4, ops=ops, capacity=2)
    table.ensure_capacity(5)
    assert table.capacity >= 5
    index = ops.index([4, 1])
    h = np.arange(8.0, dtype=np.float32).reshape(1, 2, 4)
    table.scatter(index, ops.from_host(h), ops.from_host(-h))
    gh, gc = table.gather(index, None)
    assert np.array_equal(ops.to_host(gh), h) and np.array_equal(ops.to_host(gc), -h)
    gh, _ = table.gather(index, ops.from_host(np.array([True, False])))
    assert np.array_equal(ops.to_host(gh)[0, 0], np.zeros(4)) and np.array_equal(ops.to_host(gh)[0, 1], h[0, 1])
    assert np.array_equal(ops.to_host(table.h)[4], h[0, 0])  # gather never writes the table
    table.ensure_capacity(40)  # growth keeps the rows
    assert np.array_equal(ops.to_host(table.h)[1], h[0, 1])
    rows_h, rows_c = table.read_rows(index)  # host copies
    assert isinstance(rows_h, np.ndarray) and np.array_equal(rows_h, h[0]) and np.array_equal(rows_c, -h[0])
    assert table.nbytes == 2 * 40 * 4 * 4


@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_table_shrinks_with_hysteresis_and_keeps_the_rows_in_use(kind):
    ops = _ops(kind)
    table = HiddenStateTable(hidden_dim=4, ops=ops)
    table.ensure_capacity(4096)
    ones = ops.from_host(np.ones((1, 1, 4), dtype=np.float32))
    table.scatter(ops.index([10]), ones, ones)
    assert not table.shrink_to_fit(1500)  # more than a quarter in use: keep the size (no flapping)
    assert table.shrink_to_fit(600) and table.capacity == 1200
    assert np.array_equal(ops.to_host(table.h)[10], np.ones(4))  # rows in use survive
    assert table.shrink_to_fit(0) and table.capacity == HiddenStateTable.MIN_CAPACITY
    assert not table.shrink_to_fit(0)


def test_streams_count_from_open_and_free_everything():
    served = _FakeServed()
    table = StreamTable(max_streams=2)
    s1, s2 = table.open(), table.open()  # not started: they count already
    with pytest.raises(SessionLimitError, match=r"maximum of 2 streams .*not yet started"):
        table.open()
    session = table.start(s1, served.acquire(), num_envs=3, epsilon=0.1, seed=5)
    assert session.slots == [0, 1, 2] and session.generator is not None and s1.started and not s2.started
    table.free(s1)
    table.free(s1)  # idempotent
    assert session.closed and served.slots.in_use == 0 and served.refs == 0 and len(table) == 1
    table.open()  # the freed place is available again
    table.free_all()
    assert len(table) == 0


def test_a_stream_past_max_unstarted_ends_the_oldest_one_waiting_for_its_start():
    served = _FakeServed()
    table = StreamTable(max_streams=16, max_unstarted=3)
    a, b, c = table.open(), table.open(), table.open()
    d = table.open()
    assert a.ending is not None and a.ending.error_reason == "UNSTARTED_LIMIT"
    assert a.ending.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-unstarted" in a.ending.message
    assert a.ending.reason is EndReason.EVICTED_CAPACITY and table.unstarted == 3 and len(table) == 4
    b.enter(Phase.STEPPING)  # its EpisodeStart is being served: not a candidate
    e = table.open()
    assert c.ending is not None and b.ending is None
    table.start(b, served.acquire(), num_envs=1, epsilon=0.0, seed=None)  # started: no longer counted
    assert table.unstarted == 2  # d, e
    f = table.open()
    assert (d.ending, e.ending, f.ending) == (None, None, None)


def test_unstarted_streams_all_busy_starting_refuse_a_new_one():
    table = StreamTable(max_streams=16, max_unstarted=2)
    for stream in (table.open(), table.open()):
        stream.enter(Phase.STEPPING)
    with pytest.raises(UnstartedLimitError, match=r"maximum of 2 streams at once \(--max-unstarted\)"):
        table.open()


def test_slot_limit_names_the_limit_and_the_use():
    served = _FakeServed()
    table = StreamTable(max_streams=8, max_slots=8)
    table.start(table.open(), served.acquire(), num_envs=6, epsilon=0.0, seed=None)
    with pytest.raises(SlotLimitError, match=r"serves 6 of its 8 environment rows \(--max-slots\); .* asks for 4"):
        table.start(table.open(), served, num_envs=4, epsilon=0.0, seed=None)
    feed_forward = _FakeServed(recurrent=False)  # no rows, no row limit
    session = table.start(table.open(), feed_forward.acquire(), num_envs=64, epsilon=0.0, seed=None)
    assert session.slots == [] and session.slot_index is None


def test_start_timeout_and_idle_timeout_whichever_side_stalled():
    clock = _Clock()
    table = StreamTable(max_streams=8, ttl=10.0, start_timeout=2.0, clock=clock)
    never_starts = table.open()
    waits_for_request, waits_for_read, stepping = table.open(), table.open(), table.open()
    for stream, phase in ((waits_for_request, Phase.READING), (waits_for_read, Phase.WRITING),
                          (stepping, Phase.STEPPING)):  # fmt: skip
        stream.enter(phase)
    clock.now += 3.0
    assert [(s, e.reason) for s, e in table.overdue()] == [(never_starts, EndReason.START_TIMEOUT)]
    clock.now += 8.0
    found = {s.stream_id: e for s, e in table.overdue()}
    assert set(found) == {never_starts.stream_id, waits_for_request.stream_id, waits_for_read.stream_id}
    assert "send a request" in found[waits_for_request.stream_id].message
    assert "read a response" in found[waits_for_read.stream_id].message
    assert found[waits_for_read.stream_id].code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stepping.stream_id not in found  # the server's own work never times out a stream


async def test_end_interrupts_a_waiting_handler_but_not_a_step():
    table = StreamTable(max_streams=4)

    async def handler() -> None:
        await asyncio.sleep(60)

    waiting_task = asyncio.get_running_loop().create_task(handler())
    stepping_task = asyncio.get_running_loop().create_task(handler())
    waiting, stepping = table.open(waiting_task), table.open(stepping_task)
    waiting.enter(Phase.READING)
    stepping.enter(Phase.STEPPING)
    table.end_all(Ending.draining())
    await asyncio.sleep(0)
    assert waiting_task.cancelled() or waiting_task.cancelling()
    assert not stepping_task.done() and stepping.ending is not None  # it sees the ending after its step
    table.end(waiting, Ending.start_timeout(1.0))
    assert waiting.ending.reason is EndReason.SERVER_DRAINING  # the first ending wins
    stepping_task.cancel()


def test_endings_say_what_goes_in_band():
    assert not Ending.client_closed().in_band and not Ending.client_cancelled().in_band
    assert Ending.draining().in_band and Ending.draining().code == grpc.StatusCode.UNAVAILABLE
    assert Ending.idle(5, "send a request").error_reason == "IDLE_TIMEOUT"
