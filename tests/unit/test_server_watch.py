"""The watch hub without a network: frames built once and only when watched, oldest dropped when full."""

from __future__ import annotations

from hamlet_server.watch import WatchHub


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
