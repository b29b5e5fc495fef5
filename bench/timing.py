"""Timing for the benchmarks: per-call medians of several callables measured *interleaved*.

Sampling A, B, A, B, ... instead of all of A then all of B spreads the noise of a shared machine evenly over
the figures that are compared, so their ratio means something even when the absolute numbers drift.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def interleaved_medians(
    fns: Mapping[str, Callable[[], object]], repeats: int = 30, budget_s: float = 0.02
) -> dict[str, float]:
    """Median seconds per call of each function; each sample loops a function for about ``budget_s``."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(3):  # warm-up: first calls allocate
            fn()
        start = time.perf_counter()
        fn()
        inner[name] = max(1, int(budget_s / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(values) for name, values in samples.items()}


def fmt_time(seconds: float) -> str:
    """``12.34 ms`` or ``567.8 us``, right-aligned to 11 characters."""
    return f"{seconds * 1e3:8.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:8.1f} us"


def print_goals(rows: list[tuple[str, str, str, str, bool]]) -> None:
    """The goal rows of issue 13 this benchmark measures: ``(what, measured now, baseline, goal, met)``.

    The baseline is the figure issue 13 recorded before the work (same benchmarks, a 2-core box), so each
    row reads: where it is now, where it was, where it must get to.
    """
    width = max(len(row[0]) for row in rows)
    print(f"\n{'goals (issue 13)':{width + 10}s}  {'now':>12s}  {'baseline':>12s}  {'goal':>10s}")
    for what, now, baseline, goal, met in rows:
        print(f"  {'met' if met else 'NOT met':8s}{what:{width}s}  {now:>12s}  {baseline:>12s}  {goal:>10s}")
