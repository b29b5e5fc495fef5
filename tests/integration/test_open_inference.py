"""--open-inference: the real tritonclient (PyPI ``tritonclient``) against a server hosting the trained demo models.

tritonclient runs in a process of its own (tests/integration/triton_probe.py: its v2 protos and the server's
cannot share one protobuf pool); the server runs here with a bearer token, and HamletClient.predict on the
same server gives the Q-values the v2 answers must equal exactly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from demo_models import DEMO_L1, DEMO_L2, MODELS, version_of
from live_server import ThreadedServer

from hamlet_client import HamletClient
from hamlet_server.config import ServerConfig

pytestmark = pytest.mark.slow  # starts a server and a tritonclient process

PROBE = Path(__file__).resolve().parent / "triton_probe.py"
L1, L2 = "townlet-L1-mlp", "townlet-L2-lstm"
TOKEN = "v2-test-token"


def _run_probe(target: str, inputs: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(PROBE), target, TOKEN, str(inputs), str(out), *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(23)
    return {
        "obs_l1": rng.random((4, 91), dtype=np.float32),
        "obs_l2": rng.random((3, 54), dtype=np.float32),
        "obs_l2_next": rng.random((3, 54), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN)
    config = ServerConfig(
        models=MODELS, port=0, metrics_port=0, poll_interval=0, backend="torch", open_inference=True,
        token_file=str(token_file),
    )  # fmt: skip
    server = ThreadedServer(config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def probed(
    served: ThreadedServer, inputs: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("probe")
    np.savez(out / "inputs.npz", **inputs)
    report = _run_probe(served.target, out / "inputs.npz", out)
    return report, dict(np.load(out / "outputs.npz"))


def test_tritonclient_sees_a_live_ready_server_and_which_models_are_ready(probed: Any) -> None:
    report, _ = probed
    assert report["live"] is True and report["server_ready"] is True
    assert report["server_metadata"]["name"] == "hamlet-server"
    v1, v2 = version_of(DEMO_L1), version_of(DEMO_L2)
    assert report["ready"] == {
        L1: True, f"{L1}@{v1}": True, L2: True, f"{L2}@{v2}": True, "no-such-model": False, f"{L1}@999999": False,
    }  # fmt: skip


def test_model_metadata_names_the_tensors_with_the_model_dims(probed: Any) -> None:
    report, _ = probed
    l1, l2 = report["metadata"][L1], report["metadata"][L2]
    assert l1["name"] == L1 and l1["versions"] == [str(version_of(DEMO_L1))] and l1["platform"] == "hamlet_torch"
    shapes = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in l1["inputs"]}
    assert shapes == {"observations": ("FP32", [-1, 91]), "epsilon": ("FP32", [1]), "action_mask": ("BOOL", [-1, 6])}
    assert [(t["name"], t["datatype"]) for t in l1["outputs"]] == [("q_values", "FP32"), ("actions", "INT64")]
    l2_inputs = {t["name"]: [int(d) for d in t["shape"]] for t in l2["inputs"]}
    assert l2_inputs["observations"] == [-1, 54] and l2_inputs["hidden_h"] == l2_inputs["hidden_c"] == [-1, 256]
    assert [t["name"] for t in l2["outputs"]] == ["q_values", "actions", "hidden_h", "hidden_c"]


def test_mlp_q_values_equal_the_sdk_exactly(served: ThreadedServer, probed: Any, inputs: dict[str, Any]) -> None:
    report, outputs = probed
    with HamletClient(served.target, token=TOKEN) as client:
        sdk = client.predict(inputs["obs_l1"], model=L1)
    assert report["versions"][L1] == str(sdk.version)
    assert outputs["l1_q"].dtype == np.float32 and np.array_equal(outputs["l1_q"], sdk.q_values)
    assert np.array_equal(outputs["l1_actions"], sdk.actions)


def test_lstm_q_values_and_hidden_state_equal_the_sdk_exactly(
    served: ThreadedServer, probed: Any, inputs: dict[str, Any]
) -> None:
    """Two steps: the second feeds tritonclient's hidden_h/hidden_c ([B, H]) back, as a client would."""
    report, outputs = probed
    with HamletClient(served.target, token=TOKEN) as client:
        first = client.predict(inputs["obs_l2"], model=L2)
        second = client.predict(inputs["obs_l2_next"], model=L2, hidden=first.hidden)
    assert np.array_equal(outputs["l2_q"], first.q_values)
    assert np.array_equal(outputs["l2_h"], first.hidden[0][0]) and np.array_equal(outputs["l2_c"], first.hidden[1][0])
    assert report["versions"][L2] == str(second.version)
    assert np.array_equal(outputs["l2_next_q"], second.q_values)
    assert np.array_equal(outputs["l2_next_actions"], second.actions)
    assert np.array_equal(outputs["l2_next_h"], second.hidden[0][0])


def test_typed_contents_give_the_same_answer_as_raw_bytes(probed: Any) -> None:
    _, outputs = probed
    assert np.array_equal(outputs["l2_typed_q"], outputs["l2_next_q"])


def test_requested_outputs_only_are_returned(probed: Any) -> None:
    report, _ = probed
    assert report["only_actions"] == ["actions"]


def test_bad_requests_get_the_status_code_that_says_why(probed: Any) -> None:
    report, _ = probed
    assert report["status"] == {
        "no_token": "UNAUTHENTICATED",  # the bearer-token interceptor covers the v2 service too
        "narrow_obs": "INVALID_ARGUMENT",
        "fp64_obs": "INVALID_ARGUMENT",
        "unknown_input": "INVALID_ARGUMENT",
        "epsilon_above_one": "INVALID_ARGUMENT",
        "unknown_model": "NOT_FOUND",
        "unknown_version": "NOT_FOUND",
        "unknown_output": "INVALID_ARGUMENT",
    }


def test_without_the_flag_the_v2_service_is_not_served(tmp_path: Path) -> None:
    server = ThreadedServer(ServerConfig(models=MODELS, port=0, metrics_port=0, poll_interval=0, backend="torch"))
    try:
        report = _run_probe(server.target, tmp_path / "none.npz", tmp_path, "--only-live")
    finally:
        server.stop()
    assert report["live_status"] == "UNIMPLEMENTED"


def test_serving_md_tritonclient_block_runs(tmp_path: Path) -> None:
    """docs/SERVING.md's tritonclient block, as written, against a server started with the flag."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "SERVING.md").read_text()
    (body,) = [b for b in re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M) if "tritonclient" in b]
    server = ThreadedServer(
        ServerConfig(models=MODELS, port=0, metrics_port=0, poll_interval=0, backend="torch", open_inference=True)
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", body.replace("localhost:50051", server.target)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "True True True"
    assert re.fullmatch(rf"\[\d \d \d \d\] \(4, 6\) {version_of(DEMO_L2)}", lines[1]), lines
