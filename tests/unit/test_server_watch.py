"""The watch hub without a network: frames built once and only when watched, oldest dropped when full, each
stream rate-limited with its newest frame kept, watches capped."""

from __future__ import annotations

import asyncio

import pytest

from hamlet_server.watch import WatcherLimitError, WatchHub


async def test_frames_are_built_once_only_for_watched_streams_and_the_oldest_drop() -> None:
    hub = WatchHub(queue_size=2)
    built: list[int] = []

    def build(n: int):
        def make() -> int:
            built.append(n)
            return n

        return make

    hub.publish("s1", build(0))
    assert built == [] and not hub.active  # nobody watches: nothing is built
    one, every = hub.subscribe("s1"), hub.subscribe("")
    for n in range(1, 5):
        hub.publish("s1", build(n))
    hub.publish("s2", build(9))
    assert built == [1, 2, 3, 4, 9]  # once per step, whatever the number of watchers
    assert [await one.next(), await one.next()] == [3, 4] and one.frames_dropped == 2
    assert [await every.next(), await every.next()] == [4, 9] and every.frames_dropped == 3
    hub.end("s1")
    assert await one.next() is None  # the stream ended: its watch is over
    hub.unsubscribe(one)
    hub.unsubscribe(every)
    assert not hub.active


async def test_rate_limited_frames_wait_as_the_newest_and_end_sends_the_last() -> None:
    now = [0.0]
    hub = WatchHub(fps=10, clock=lambda: now[0])  # one frame per 0.1 s of the (frozen) clock
    built: list[int] = []

    def build(n: int):
        return lambda: built.append(n) or n

    watcher = hub.subscribe("s1")
    for n in range(5):
        hub.publish("s1", build(n))
    assert built == [0]  # the first goes at once; 1..4 replace each other as the newest, unbuilt
    while built == [0]:  # the timer fires 0.1 s later with the newest
        await asyncio.sleep(0.01)
    assert built == [0, 4]
    hub.publish("s1", build(5))  # the clock has not moved: it waits
    hub.end("s1")  # the stream ended: its newest frame goes out before the watch closes
    assert built == [0, 4, 5]
    assert [await watcher.next() for _ in range(4)] == [0, 4, 5, None]


def test_watches_past_max_watchers_are_refused_and_unsubscribing_gives_the_place_back() -> None:
    hub = WatchHub(max_watchers=2)
    first, _ = hub.subscribe("s1"), hub.subscribe("")
    with pytest.raises(WatcherLimitError, match=r"maximum of 2 watches \(--max-watchers\)"):
        hub.subscribe("s2")
    hub.unsubscribe(first)
    hub.unsubscribe(first)  # twice: counted once
    assert len(hub) == 1
    hub.subscribe("s2")


@pytest.mark.parametrize("count", [0, 1, 127, 128, 300, 2**40])
def test_a_frame_serialized_once_reads_back_with_each_watchers_dropped_count(count: int) -> None:
    from hamlet_client.proto import inference_service_pb2 as pb
    from hamlet_server.servicer import _frames_dropped_field

    shared = pb.WatchEpisodesResponse(session_id="s1", step_index=3, actions=[1, 2]).SerializeToString()
    frame = pb.WatchEpisodesResponse.FromString(shared + _frames_dropped_field(count))
    assert (frame.frames_dropped, frame.step_index, list(frame.actions)) == (count, 3, [1, 2])
