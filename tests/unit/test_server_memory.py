"""MemoryTrimmer without a server: one trim after enough request bytes and a pause, none before, postponed
while requests keep coming; and glibc's malloc_trim is reachable here."""

from __future__ import annotations

import asyncio
import sys

import pytest

from hamlet_server.memory import MemoryTrimmer, malloc_trim


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.02)


async def test_one_trim_after_the_threshold_and_a_quiet_pause() -> None:
    now = [0.0]
    calls: list[int] = []
    trimmer = MemoryTrimmer(1000, quiet=0.05, trim=lambda: calls.append(1) or True, clock=lambda: now[0])
    trimmer.note(600)
    await _settle()
    assert calls == []  # under the threshold: nothing to give back
    trimmer.note(600)
    now[0] += 0.01  # the clock barely moved: another request came "just now"
    await _settle()
    assert calls == []  # still busy by the clock: postponed
    now[0] += 1.0
    await _settle()
    assert calls == [1] and trimmer.trims == 1
    trimmer.note(10)
    now[0] += 1.0
    await _settle()
    assert calls == [1]  # the count started again from zero


def test_a_threshold_of_zero_never_trims() -> None:
    trimmer = MemoryTrimmer(0, trim=lambda: pytest.fail("trimmed"))
    trimmer.note(10**9)  # no running loop needed: it returns at once


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_malloc_trim_is_available_on_linux() -> None:
    assert malloc_trim() is True
