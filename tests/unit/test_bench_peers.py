"""bench/bench_peers.py (issue 25's `make bench` row): its medians, ratios and goal rows; the FastAPI peer it
starts answers what the model answers; bench/profile_stream_step.py charges time to the right parts; the
scripts' `--help` works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from demo_models import DEMO_L2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from bench_peers import Figures, format_report, goal_rows, medians, ratios  # noqa: E402
from peer_client import parse_target  # noqa: E402
from profile_stream_step import IDLE, part_of, parts_per_step  # noqa: E402

FIGURES = {
    "hamlet-stream": Figures(p50_us=450.0, steps_per_s=6000.0),
    "hamlet-predict": Figures(p50_us=900.0, steps_per_s=1900.0),
    "fastapi": Figures(p50_us=500.0, steps_per_s=2000.0),
}


def _run(key: str, mode: str, value: float) -> dict[str, object]:
    return {"key": key, "mode": mode, ("p50_us" if mode == "latency" else "steps_per_s"): value}


def test_medians_take_each_targets_median_per_mode() -> None:
    runs = []
    for key, p50s, rates in (
        ("hamlet-stream", [400, 700, 450], [5000, 6000, 7000]),
        ("hamlet-predict", [900, 800, 1000], [1900, 1500, 2500]),
        ("fastapi", [500, 510, 300], [2000, 2100, 1000]),
    ):
        runs += [_run(key, "latency", v) for v in p50s] + [_run(key, "tput", v) for v in rates]
    assert medians(runs) == {
        "hamlet-stream": Figures(450, 6000),
        "hamlet-predict": Figures(900, 1900),
        "fastapi": Figures(500, 2000),
    }


def test_medians_refuse_a_target_without_both_measurements() -> None:
    runs = [_run(key, "latency", 1.0) for key in ("hamlet-stream", "hamlet-predict", "fastapi")]
    with pytest.raises(ValueError, match="expected latency and tput runs of hamlet-stream, got 1 and 0"):
        medians(runs)


def test_ratios_are_over_fastapi_and_goals_follow_the_issue() -> None:
    rel = ratios(FIGURES)
    assert rel["fastapi"] == Figures(1.0, 1.0)
    assert (rel["hamlet-stream"].p50_us, rel["hamlet-stream"].steps_per_s) == pytest.approx((0.9, 3.0))
    assert (rel["hamlet-predict"].p50_us, rel["hamlet-predict"].steps_per_s) == pytest.approx((1.8, 0.95))
    rows = goal_rows(FIGURES)
    assert [(what, met) for what, _, met in rows] == [
        ("stream b1 p50 <= 0.9x FastAPI", True),  # exactly at the goal counts as met
        ("Predict b1 p50 <= 0.9x FastAPI", False),
        ("Predict steps/s >= 1x FastAPI", False),
        ("stream steps/s >= 3x FastAPI", True),
    ]
    assert [round(value, 3) for _, value, _ in rows] == [0.9, 1.8, 0.95, 3.0]


def test_report_prints_figures_ratios_and_goal_rows() -> None:
    lines = format_report(FIGURES).splitlines()
    assert lines[1].split() == ["Hamlet", "StreamEpisode", "450", "us", "6,000", "0.90x", "3.00x"]
    assert lines[2].split() == ["Hamlet", "Predict", "900", "us", "1,900", "1.80x", "0.95x"]
    assert lines[3].split() == ["FastAPI", "+", "uvicorn", "500", "us", "2,000", "1.00x", "1.00x"]
    assert "  NOT met Predict b1 p50 <= 0.9x FastAPI" in lines[-3] and lines[-3].endswith("1.80x")
    assert lines[-1].startswith("  met     stream steps/s >= 3x FastAPI") and lines[-1].endswith("3.00x")


def test_targets_name_a_known_kind() -> None:
    assert parse_target("http@127.0.0.1:8000") == ("http", "127.0.0.1:8000")
    kinds = "hamlet-stream, hamlet-predict, http, tcp, lane-stream, lane-predict"
    with pytest.raises(ValueError, match=f"KIND one of {kinds}, got 'grpc@x:1'"):
        parse_target("grpc@x:1")


def test_profile_parts_charge_builtins_to_their_callers_edge_by_edge() -> None:
    servicer = ("/x/hamlet_server/servicer.py", 10, "_run")
    batcher = ("/x/hamlet_server/batcher.py", 20, "_forward")
    ort_run = ("~", 0, "<built-in method onnxruntime.capi.onnxruntime_pybind11_state.run>")
    index_select = ("~", 0, "<method 'index_select' of 'torch._C.TensorBase' objects>")
    epoll = ("~", 0, "<method 'poll' of 'select.epoll' objects>")
    assert part_of(servicer) == "servicer (servicer.py)" and part_of(index_select) is None
    assert part_of(ort_run) == "forward: onnxruntime session.run" and part_of(epoll) == IDLE
    # pstats: func -> (primitive calls, calls, own s, cumulative s, {caller: (calls, calls, own s, cum s)})
    stats = {
        servicer: (10, 10, 0.004, 0.02, {}),
        batcher: (10, 10, 0.002, 0.01, {servicer: (10, 10, 0.002, 0.01)}),
        ort_run: (10, 10, 0.003, 0.003, {batcher: (10, 10, 0.003, 0.003)}),
        index_select: (20, 20, 0.003, 0.003, {batcher: (10, 10, 0.001, 0.001), servicer: (10, 10, 0.002, 0.002)}),
        epoll: (10, 10, 0.005, 0.005, {}),
    }
    parts = parts_per_step(stats, steps=10)
    assert parts == pytest.approx({
        IDLE: 500.0,
        "servicer (servicer.py)": 600.0,  # 400 own + 200 of index_select called from it
        "forward: onnxruntime session.run": 300.0,
        "batcher (batcher.py)": 300.0,  # 200 own + 100 of index_select
    })  # fmt: skip
    assert next(iter(parts)) == "servicer (servicer.py)"  # heaviest first


@pytest.fixture(scope="module")
def peer_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    from peer_fastapi import RawStepModel

    from townlet.inference import HamletModel

    model = HamletModel.load(DEMO_L2)
    onnx = model.export_to_onnx(tmp_path_factory.mktemp("peer") / "l2.onnx", verify=True)
    return model, RawStepModel(onnx), onnx


def test_peer_steps_raw_bytes_like_the_model(peer_model) -> None:  # type: ignore[no-untyped-def]
    model, peer, _ = peer_model
    rng = np.random.default_rng(1)
    obs = rng.random((3, 54), dtype=np.float32)
    h, c = rng.standard_normal((2, 3, 256), dtype=np.float32)
    answer = np.frombuffer(peer.step(obs.tobytes() + h.tobytes() + c.tobytes()), dtype="<f4")
    assert answer.size == 3 * (6 + 256 + 256)
    expected = model.predict(obs, hidden=(h[None], c[None]))
    q, h2, c2 = answer[:18].reshape(3, 6), answer[18 : 18 + 768].reshape(3, 256), answer[18 + 768 :].reshape(3, 256)
    np.testing.assert_allclose(q, expected.q_values, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(h2, np.asarray(expected.hidden[0])[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c2, np.asarray(expected.hidden[1])[0], rtol=1e-4, atol=1e-5)


def test_peer_app_answers_steps_and_refuses_a_ragged_body(peer_model) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from peer_fastapi import build_app

    _, peer, _ = peer_model
    body = np.zeros(54 + 512, np.float32).tobytes()
    with TestClient(build_app(peer)) as client:
        answer = client.post("/step", content=body)
        assert answer.status_code == 200 and answer.content == peer.step(body)
        bad = client.post("/step", content=body[:-4])
        assert bad.status_code == 400
        assert bad.text == "expected a multiple of 566 float32 values (obs + h + c per row), got 565"


@pytest.mark.slow
def test_the_framed_tcp_floor_answers_what_the_peer_answers_even_in_pieces(peer_model) -> None:  # type: ignore[no-untyped-def]
    import socket

    from floor import spawn_ready
    from peer_client import FRAME, read_frame

    _, peer, onnx = peer_model
    proc, addr = spawn_ready([sys.executable, str(ROOT / "bench" / "floor_tcp.py"), "--onnx", str(onnx)])
    try:
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            rng = np.random.default_rng(2)
            bodies = [rng.random(54 + 512, dtype=np.float32).tobytes() for _ in range(3)]
            frames = b"".join(FRAME.pack(len(body)) + body for body in bodies)
            sock.sendall(frames[:7])  # a frame split mid-header, then two and a half frames at once
            sock.sendall(frames[7:])
            assert [read_frame(sock) for _ in bodies] == [peer.step(body) for body in bodies]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_the_lane_carries_our_servicer_on_frames_with_its_answers_and_its_statuses(tmp_path: Path) -> None:
    """bench/lane_tcp.py, driven by peer_client's lane targets as bench_peers drives it: a stream and Predicts on
    frames give the library's Q-values over a 3-step episode; a frame that is not a message gets INVALID_ARGUMENT,
    and a step before the start an EpisodeEnded and FAILED_PRECONDITION, as over gRPC."""
    import socket

    from floor import spawn_ready
    from peer_client import FRAME, read_frame, rollout

    from hamlet_client.proto import inference_service_pb2 as pb
    from townlet.inference import HamletModel

    (tmp_path / "townlet-L2-lstm").mkdir()
    (tmp_path / "townlet-L2-lstm" / DEMO_L2.name).symlink_to(DEMO_L2)
    proc, addr = spawn_ready([sys.executable, str(ROOT / "bench" / "lane_tcp.py"), "--models", str(tmp_path),
                              "--port", "0", "--metrics-port", "0", "--poll-interval", "0"])  # fmt: skip
    model = HamletModel.load(DEMO_L2)
    obs = np.random.default_rng(3).random((3, 54), dtype=np.float32)
    expected, hidden = [], None
    for row in obs:
        out = model.predict(row[None], hidden=hidden)
        expected.append(out.q_values)
        hidden = out.hidden
    try:
        for kind in ("lane-stream", "lane-predict"):  # state on the server; (h, c) sent and returned
            q = rollout(f"{kind}@{addr}", obs, steps=3)
            np.testing.assert_allclose(q, np.concatenate(expected), rtol=1e-4, atol=1e-4, err_msg=kind)
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(FRAME.pack(3) + b"P\xff\xff")  # not a PredictRequest
            assert read_frame(sock)[:2] == b"E" + bytes([3])  # INVALID_ARGUMENT
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            step = pb.StreamEpisodeRequest(step=pb.EpisodeStep()).SerializeToString()
            sock.sendall(FRAME.pack(1 + len(step)) + b"S" + step)
            ended = pb.StreamEpisodeResponse.FromString(read_frame(sock)[1:]).ended  # in band first, as over gRPC
            assert (ended.status_code, ended.error_reason) == (9, "STEP_BEFORE_START")  # FAILED_PRECONDITION
            status = read_frame(sock)
            assert status[:2] == b"E" + bytes([9]) and status[2:].decode().startswith("step before start")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_report_says_what_the_floors_cost() -> None:
    figures = {**FIGURES, "floor-stream": Figures(400.0, 5000.0), "floor-tcp": Figures(200.0, 8000.0)}
    report = format_report(figures)
    assert "Hamlet StreamEpisode   our own work    50 us; the floor + forward alone is 0.80x FastAPI's p50" in report
    assert report.endswith("(no HTTP, no gRPC) is 0.40x FastAPI's p50")
    report = format_report({**figures, "lane-stream": Figures(350.0, 9000.0)})
    assert report.endswith("ours on framed TCP, stream (our servicer, same messages on those frames) is 0.70x "
                           "FastAPI's p50 (our own work 150 us) and 4.50x its steps/s")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    ["bench_peers.py", "peer_client.py", "peer_fastapi.py", "profile_stream_step.py", "floor_tcp.py", "lane_tcp.py"],
)
def test_help_works(script: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script} ")
