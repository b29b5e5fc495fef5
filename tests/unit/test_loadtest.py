"""`hamlet-bench`'s pure parts: percentiles, open-loop pacing, /metrics parsing, the report and the CLI's setup."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hamlet_client.loadtest import LoadSpec, Pacer, RunFigures, format_report, report_json
from hamlet_client.loadtest.cli import build_parser, find_floor_command, spawn_ready
from hamlet_client.loadtest.figures import histogram_totals, mean_batch, median_figures, summarize_latencies

ROOT = Path(__file__).resolve().parents[2]

METRICS_PAGE = """\
# HELP hamlet_batch_size Rows per batched forward
# TYPE hamlet_batch_size histogram
hamlet_batch_size_bucket{le="1.0",model="lstm"} 10.0
hamlet_batch_size_bucket{le="+Inf",model="lstm"} 40.0
hamlet_batch_size_count{model="lstm"} 40.0
hamlet_batch_size_sum{model="lstm"} 120.0
hamlet_batch_size_count{model="mlp"} 10.0
hamlet_batch_size_sum{model="mlp"} 2.5e1
# HELP hamlet_batch_size_created when the series started
hamlet_batch_size_created{model="lstm"} 1.7e9
hamlet_requests_total{method="Predict",code="OK"} 99.0
"""


def test_percentiles_interpolate_between_ranks_in_microseconds() -> None:
    summary = summarize_latencies([i / 1000 for i in range(1, 101)])  # 1 ms .. 100 ms
    assert summary.count == 100
    assert summary.p50_us == pytest.approx(50_500.0)
    assert summary.p90_us == pytest.approx(90_100.0)
    assert summary.p99_us == pytest.approx(99_010.0)
    assert summary.mean_us == pytest.approx(50_500.0)
    one = summarize_latencies([0.002])
    assert (one.p50_us, one.p99_us) == pytest.approx((2000.0, 2000.0))


def test_no_latencies_is_nan_not_zero() -> None:
    empty = summarize_latencies([])
    assert empty.count == 0 and all(math.isnan(v) for v in (empty.p50_us, empty.p90_us, empty.p99_us))


def test_pacer_spreads_the_total_rate_over_the_streams() -> None:
    """4 streams sharing 1000 calls/s: each is due every 4 ms, their phases 1 ms apart, so together they send
    one call per millisecond."""
    pacers = [Pacer.for_stream(1000.0, 4, i, start=10.0) for i in range(4)]
    due = sorted(p.next_due() for p in pacers for _ in range(3))
    assert due == pytest.approx([10.0 + k * 0.001 for k in range(12)])
    assert pacers[0].interval == pytest.approx(0.004)


@pytest.mark.parametrize(("rate", "streams", "index"), [(0.0, 4, 0), (-5.0, 4, 0), (100.0, 0, 0), (100.0, 4, 4)])
def test_pacer_refuses_impossible_settings(rate: float, streams: int, index: int) -> None:
    with pytest.raises(ValueError):
        Pacer.for_stream(rate, streams, index, start=0.0)


def test_histogram_totals_add_every_label_set_and_ignore_other_series() -> None:
    assert histogram_totals(METRICS_PAGE, "hamlet_batch_size") == (145.0, 50.0)
    assert histogram_totals(METRICS_PAGE, "hamlet_request_latency_seconds") is None
    assert histogram_totals("", "hamlet_batch_size") is None


def test_mean_batch_is_the_difference_of_two_scrapes() -> None:
    assert mean_batch((100.0, 50.0), (400.0, 150.0)) == pytest.approx(3.0)
    assert mean_batch((100.0, 50.0), (100.0, 50.0)) is None  # no forward in between
    assert mean_batch(None, (1.0, 1.0)) is None


def _run(label: str, steps: int, p50_ms: float, errors: dict[str, int] | None = None) -> RunFigures:
    latencies = [p50_ms / 1000] * 10
    return RunFigures(
        label=label,
        elapsed_s=2.0,
        envs=4,
        steps=steps,
        step_latency=summarize_latencies(latencies),
        errors=errors or {},
        mean_server_batch=3.5 if label == "server" else None,
        client_cpu=0.4,
    )


def test_rates_count_rows_of_steps_and_predicts() -> None:
    run = RunFigures(label="server", elapsed_s=2.0, envs=4, steps=1000, predicts=200)
    assert (run.steps_per_s, run.predicts_per_s, run.env_steps_per_s) == (500.0, 100.0, 2400.0)


def test_report_prints_each_figure_beside_the_floor_as_a_ratio() -> None:
    text = format_report(_run("server", 1000, 2.0, {"UNAVAILABLE": 2}), _run("floor", 4000, 0.5))
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert lines["steps/s"].split() == ["steps/s", "500", "2,000", "0.25x"]
    assert lines["env-steps/s"].split() == ["env-steps/s", "2,000", "8,000", "0.25x"]
    assert lines["step p50"].split() == ["step", "p50", "2,000", "us", "500", "us", "4.00x"]
    assert lines["mean server batch"].split()[-3:] == ["3.50", "-", "-"]
    assert "errors by status: UNAVAILABLE 2" in text
    assert "predict" not in text  # no Predict calls: no Predict rows


def test_report_without_a_floor_has_one_column() -> None:
    text = format_report(_run("server", 1000, 2.0))
    assert text.splitlines()[0].split() == ["server"]
    assert "ratio" not in text and "errors by status" not in text


def test_json_has_every_figure_no_nan_and_ratios() -> None:
    config = {"streams": 2, "envs": 4}
    doc = report_json(config, _run("server", 1000, 2.0), _run("floor", 4000, 0.5))
    text = json.dumps(doc, allow_nan=False)  # NaN would not be JSON
    back = json.loads(text)
    assert back["config"] == config
    for key in ("steps_per_s", "env_steps_per_s", "step_latency", "errors", "error_count", "mean_server_batch"):
        assert key in back["server"] and key in back["floor"]
    assert back["server"]["predict_latency"]["p50_us"] is None
    assert back["ratios"]["steps/s"] == pytest.approx(0.25) and back["ratios"]["step p99"] == pytest.approx(4.0)
    assert report_json(config, _run("server", 1, 1.0))["floor"] is None


def test_json_with_a_local_run_has_local_over_server_ratios() -> None:
    doc = report_json({}, _run("server", 1000, 2.0), local=_run("local", 5000, 0.25))
    back = json.loads(json.dumps(doc, allow_nan=False))
    assert back["local"]["steps_per_s"] == pytest.approx(2500.0)  # 5000 steps in 2 s
    assert back["local_ratios"]["steps/s"] == pytest.approx(5.0)
    assert back["local_ratios"]["step p50"] == pytest.approx(0.125)
    assert "local" not in report_json({}, _run("server", 1, 1.0))
    assert build_parser().parse_args(["--local"]).local is True


def test_rounds_give_medians_and_add_up_errors() -> None:
    runs = [_run("server", n, ms, {"INTERNAL": 1}) for n, ms in ((1000, 3.0), (3000, 1.0), (2000, 2.0))]
    median = median_figures(runs)
    assert median.steps_per_s == pytest.approx(1000.0)
    assert median.step_latency.p50_us == pytest.approx(2000.0)
    assert median.errors == {"INTERNAL": 3}


@pytest.mark.parametrize(
    "bad",
    [
        {"streams": 0},
        {"envs": 0},
        {"duration": 0.0},
        {"warmup": -1.0},
        {"rate": 0.0},
        {"predict_fraction": 1.5},
        {"episode_steps": -1},
    ],
)
def test_load_spec_refuses_what_cannot_run(bad: dict[str, float]) -> None:
    settings = {"streams": 2, "envs": 2, "obs_dim": 54, "duration": 1.0, **bad}
    with pytest.raises(ValueError):
        LoadSpec(**settings)  # type: ignore[arg-type]


def test_parser_defaults_and_repeatable_targets() -> None:
    args = build_parser().parse_args(["--target", "a:1", "--target", "b:2", "--json"])
    assert args.target == ["a:1", "b:2"] and args.json == "-"
    assert (args.streams, args.envs, args.rate, args.predict_fraction) == (4, 1, None, 0.0)
    help_text = build_parser().format_help()
    for word in ("--floor", "--rate", "--predict-fraction", "--warmup", "--duration", "--metrics", "perf_analyzer"):
        assert word in help_text


def test_the_floor_is_found_in_the_repository_or_given() -> None:
    assert find_floor_command(None) == [sys.executable, str(ROOT / "bench" / "floor.py")]
    assert find_floor_command("python3 /x/floor.py --flag 'a b'") == ["python3", "/x/floor.py", "--flag", "a b"]


@pytest.mark.slow  # starts Python processes
def test_spawn_ready_reads_the_address_or_explains() -> None:
    proc, address = spawn_ready([sys.executable, "-c", "print('READY 127.0.0.1:4242'); import time; time.sleep(60)"])
    try:
        assert address == "127.0.0.1:4242" and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(RuntimeError, match="did not print 'READY host:port'"):
        spawn_ready([sys.executable, "-c", "print('hello')"])


@pytest.mark.slow  # starts a Python process
def test_the_load_tester_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import hamlet_client.loadtest.cli\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "print('torch-free')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch-free"
