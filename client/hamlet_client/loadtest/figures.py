"""The arithmetic of `hamlet-bench`: latency percentiles, open-loop pacing, /metrics parsing, the report.

Pure functions and small value classes, testable without a server: the load generator (`driver`) records
raw latencies and counts into a `RunFigures`, and the CLI prints `format_report` / `report_json` of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PERCENTILES",
    "LatencySummary",
    "Pacer",
    "RunFigures",
    "format_report",
    "histogram_totals",
    "mean_batch",
    "median_figures",
    "report_json",
    "summarize_latencies",
]

PERCENTILES = (50, 90, 99)
"""The step-latency percentiles every report shows."""


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one kind of call, in microseconds; all NaN when no call was timed."""

    count: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float


def summarize_latencies(seconds: Sequence[float]) -> LatencySummary:
    """`LatencySummary` of latencies given in seconds (linear interpolation between ranks, as numpy does)."""
    if not seconds:
        return LatencySummary(0, math.nan, math.nan, math.nan, math.nan)
    micros = np.asarray(seconds, dtype=np.float64) * 1e6
    p50, p90, p99 = (float(v) for v in np.percentile(micros, PERCENTILES))
    return LatencySummary(len(micros), p50, p90, p99, float(micros.mean()))


class Pacer:
    """Intended send times of one stream in open-loop mode: ``interval`` apart, starting at ``start + phase``.

    A stream keeps at most one call in flight (an environment waits for its actions), so when it falls
    behind, the next call goes at once; its latency is still counted from the *intended* time, so a slow
    server shows up as latency and as an achieved rate below the target, never hidden (no coordinated
    omission).
    """

    def __init__(self, interval: float, start: float, phase: float = 0.0) -> None:
        if not interval > 0.0:
            raise ValueError(f"interval: expected seconds > 0, got {interval!r}")
        self.interval = interval
        self._next = start + phase

    @classmethod
    def for_stream(cls, rate: float, streams: int, index: int, start: float) -> Pacer:
        """Stream ``index`` of ``streams`` sharing a total ``rate`` (calls/s), phases spread over one interval."""
        if not rate > 0.0 or streams < 1 or not 0 <= index < streams:
            raise ValueError(f"rate {rate!r} must be > 0 and index {index!r} in [0, {streams})")
        interval = streams / rate
        return cls(interval, start, phase=interval * index / streams)

    def next_due(self) -> float:
        """The intended time of the next call (then advances by one interval)."""
        due = self._next
        self._next += self.interval
        return due


_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")


def histogram_totals(text: str, name: str) -> tuple[float, float] | None:
    """``(sum, count)`` of Prometheus histogram ``name`` in a text exposition page, added over all label
    sets (e.g. every model of ``hamlet_batch_size``); None when the page has no such series."""
    totals = {"_sum": 0.0, "_count": 0.0}
    seen = False
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or not match["name"].startswith(name):
            continue
        suffix = match["name"][len(name) :]
        if suffix in totals:
            totals[suffix] += float(match["value"])
            seen = True
    return (totals["_sum"], totals["_count"]) if seen else None


def mean_batch(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Mean rows per server forward between two scrapes of ``hamlet_batch_size``; None when unknown."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


@dataclass
class RunFigures:
    """What one measured run against one server gives (the floor's run has the same fields)."""

    label: str
    elapsed_s: float
    envs: int
    steps: int = 0
    predicts: int = 0
    step_latency: LatencySummary = field(default_factory=lambda: summarize_latencies([]))
    predict_latency: LatencySummary = field(default_factory=lambda: summarize_latencies([]))
    errors: dict[str, int] = field(default_factory=dict)
    """Failed calls and streams the server ended, by gRPC status code name, over the whole run (warm-up too)."""
    mean_server_batch: float | None = None
    client_cpu: float = 0.0
    """Client process CPU seconds per wall second (1.0 = one core busy: the client may be the limit)."""
    behind_schedule: int = 0
    """Open-loop calls sent late because the previous call of their stream had not come back."""

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def predicts_per_s(self) -> float:
        return self.predicts / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def env_steps_per_s(self) -> float:
        """Observation rows answered per second, stream steps and Predict calls together."""
        return (self.steps + self.predicts) * self.envs / self.elapsed_s if self.elapsed_s > 0 else 0.0


def median_figures(runs: Sequence[RunFigures]) -> RunFigures:
    """One `RunFigures` of several rounds: medians of the rates and percentiles, errors added up."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    elapsed = float(np.median([r.elapsed_s for r in runs]))

    def med(values: Sequence[float]) -> float:
        finite = [v for v in values if not math.isnan(v)]
        return float(np.median(finite)) if finite else math.nan

    def latency(kind: str) -> LatencySummary:
        parts = [getattr(r, kind) for r in runs]
        return LatencySummary(
            sum(p.count for p in parts),
            *(med([getattr(p, f) for p in parts]) for f in ("p50_us", "p90_us", "p99_us", "mean_us")),
        )

    errors: dict[str, int] = {}
    for run in runs:
        for code, count in run.errors.items():
            errors[code] = errors.get(code, 0) + count
    batches = [r.mean_server_batch for r in runs if r.mean_server_batch is not None]
    return RunFigures(
        label=first.label,
        elapsed_s=elapsed,
        envs=first.envs,
        steps=round(med([r.steps_per_s for r in runs]) * elapsed),
        predicts=round(med([r.predicts_per_s for r in runs]) * elapsed),
        step_latency=latency("step_latency"),
        predict_latency=latency("predict_latency"),
        errors=errors,
        mean_server_batch=float(np.median(batches)) if batches else None,
        client_cpu=med([r.client_cpu for r in runs]),
        behind_schedule=sum(r.behind_schedule for r in runs),
    )


# ------------------------------------------------------------------------------------------- the report

_Row = tuple[str, float | None, str]  # label, value, unit ("/s", "us", "" or "x")


def _rows(run: RunFigures) -> list[_Row]:
    rows: list[_Row] = [
        ("steps/s", run.steps_per_s, "/s"),
        ("env-steps/s", run.env_steps_per_s, "/s"),
    ]
    rows += [(f"step p{q}", getattr(run.step_latency, f"p{q}_us"), "us") for q in PERCENTILES]
    if run.predicts or run.predict_latency.count:
        rows.append(("predict/s", run.predicts_per_s, "/s"))
        rows += [(f"predict p{q}", getattr(run.predict_latency, f"p{q}_us"), "us") for q in PERCENTILES]
    rows.append(("errors", float(sum(run.errors.values())), ""))
    rows.append(("mean server batch", run.mean_server_batch, ""))
    rows.append(("client CPU (cores)", run.client_cpu, ""))
    return rows


def _cell(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "/s":
        return f"{value:,.0f}"
    if unit == "us":
        return f"{value / 1e3:,.2f} ms" if value >= 10_000 else f"{value:,.0f} us"
    return f"{value:,.2f}" if value % 1 else f"{value:,.0f}"


def _ratio(ours: float | None, floor: float | None) -> float | None:
    if ours is None or floor is None or math.isnan(ours) or math.isnan(floor) or floor == 0:
        return None
    return ours / floor


def format_report(run: RunFigures, floor: RunFigures | None = None) -> str:
    """The end-of-run table: each figure, and with a floor run the floor's figure and ours / floor beside it.

    Rates want a ratio near 1 (or above); latencies want one near 1 (or below).
    """
    header = f"{'':20s} {run.label:>14s}"
    if floor is not None:
        header += f" {floor.label:>14s} {'ratio':>8s}"
    lines = [header]
    floor_rows = dict((label, value) for label, value, _ in _rows(floor)) if floor is not None else {}
    for label, value, unit in _rows(run):
        line = f"{label:20s} {_cell(value, unit):>14s}"
        if floor is not None:
            theirs = floor_rows.get(label)
            ratio = _ratio(value, theirs) if unit in ("/s", "us") else None
            line += f" {_cell(theirs, unit):>14s} {(f'{ratio:.2f}x' if ratio is not None else '-'):>8s}"
        lines.append(line)
    for name, figures in (("", run), ("floor ", floor)):
        if figures is not None and figures.errors:
            listed = ", ".join(f"{code} {count}" for code, count in sorted(figures.errors.items()))
            lines.append(f"{name}errors by status: {listed}")
    if run.behind_schedule:
        lines.append(f"{run.behind_schedule} calls went late (their stream's previous call had not come back)")
    return "\n".join(lines)


def _figures_json(run: RunFigures) -> dict[str, Any]:
    out = asdict(run)
    out.update(
        steps_per_s=run.steps_per_s,
        env_steps_per_s=run.env_steps_per_s,
        predicts_per_s=run.predicts_per_s,
        error_count=sum(run.errors.values()),
    )
    cleaned: dict[str, Any] = _no_nan(out)
    return cleaned


def _no_nan(value: Any) -> Any:
    """NaN is not JSON: unknown figures become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    return value


def report_json(
    config: Mapping[str, Any], run: RunFigures, floor: RunFigures | None = None, *, local: RunFigures | None = None
) -> dict[str, Any]:
    """The ``--json`` document: the settings, our figures, the floor's, and ours / floor per figure; with
    ``local`` (``--local``) also the local run's figures and local / server per figure."""
    doc: dict[str, Any] = {"config": dict(config), "server": _figures_json(run), "floor": None, "ratios": None}
    if floor is not None:
        doc["floor"] = _figures_json(floor)
        doc["ratios"] = _ratios(run, floor)
    if local is not None:
        doc["local"] = _figures_json(local)
        doc["local_ratios"] = _ratios(local, run)
    return doc


def _ratios(run: RunFigures, base: RunFigures) -> dict[str, float | None]:
    theirs = {label: value for label, value, _ in _rows(base)}
    return {label: _ratio(value, theirs.get(label)) for label, value, unit in _rows(run) if unit in ("/s", "us")}
