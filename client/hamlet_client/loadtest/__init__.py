"""`hamlet-bench`: an episode-aware load tester for a Hamlet server (no torch; grpcio, protobuf, numpy).

    hamlet-bench --target 127.0.0.1:50051 --streams 64 --envs 4 --duration 10 --floor

From Python, `run_load(LoadSpec(...), targets)` in an event loop returns the figures of one measured run.
`figures` holds the pure arithmetic (percentiles, pacing, /metrics parsing, the report), `driver` the
asyncio load generator, `cli` the command line.
"""

from hamlet_client.loadtest.driver import LoadSpec, Progress, discover_model, run_load
from hamlet_client.loadtest.figures import LatencySummary, Pacer, RunFigures, format_report, report_json

__all__ = [
    "LatencySummary",
    "LoadSpec",
    "Pacer",
    "Progress",
    "RunFigures",
    "discover_model",
    "format_report",
    "report_json",
    "run_load",
]
