"""The generated stubs type-check user code: mypy (strict, the project's config) passes a snippet that uses
HamletClient, the messages and the raw stub correctly, and reports each deliberate mistake of another.

The raw stub's methods are typed by mypy-protobuf's ``_pb2_grpc.pyi`` (scripts/gen_proto.py) over grpcio's
types (types-grpcio, in the dev extra): `InferenceStub(channel).Predict` takes a PredictRequest and returns
a PredictResponse, on a `grpc.Channel` and on a `grpc.aio.Channel`.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from live_server import ThreadedServer

from hamlet_server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
import grpc
import numpy as np

from hamlet_client import HamletClient
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.stub import InferenceStub, async_stub


def best_q(target: str) -> float:
    with HamletClient(target) as client:
        return float(client.predict(np.zeros(91, np.float32), model="townlet-L1-mlp").q_values.max())


def raw_version(channel: grpc.Channel) -> int:
    response = InferenceStub(channel).Predict(pb.PredictRequest(model="townlet-L1-mlp"), timeout=5.0)
    return response.version


async def raw_default(channel: grpc.aio.Channel) -> str:
    listing = await async_stub(channel).ListModels(pb.ListModelsRequest())
    return listing.default_model
"""

# Each mistake on its own line, with the words mypy's report must contain.
BAD = [
    ("InferenceStub(channel).Predict(pb.ListModelsRequest())", 'incompatible type "ListModelsRequest"'),
    ("x: pb.ListModelsResponse = InferenceStub(channel).Predict(pb.PredictRequest())", '"PredictResponse"'),
    ("InferenceStub(channel).Predict(pb.PredictRequest()).versions", 'has no attribute "versions"'),
    ('pb.PredictRequest(model=3, epsilon="greedy")', 'incompatible type "int"'),
    ("InferenceStub(channel).Predictt", 'has no attribute "Predictt"'),
]


def _client_md_block() -> str:
    """docs/CLIENT.md's typed-stub block (the one that makes an InferenceStub)."""
    text = (ROOT / "docs" / "CLIENT.md").read_text()
    (body,) = [b for b in re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M) if "InferenceStub(" in b]
    return body


def _bad_module() -> str:
    lines = [
        "import grpc",
        "from hamlet_client.proto import inference_service_pb2 as pb",
        "from hamlet_client.stub import InferenceStub",
        "",
        "def mistakes(channel: grpc.Channel) -> None:",
    ]
    return "\n".join(lines + [f"    {code}" for code, _ in BAD]) + "\n"


@pytest.mark.slow  # mypy in a subprocess: ~10-30 s
def test_mypy_passes_correct_user_code_and_reports_each_mistake(tmp_path: Path) -> None:
    try:
        importlib.metadata.distribution("types-grpcio")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            "types-grpcio is not installed, so every stub method is Any to mypy: `make install` (the dev extra)"
        )
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(_bad_module())
    (tmp_path / "docs_block.py").write_text(_client_md_block())
    files = [str(tmp_path / name) for name in ("good.py", "bad.py", "docs_block.py")]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), *files],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = result.stdout + result.stderr
    assert "good.py" not in report and "docs_block.py" not in report, f"correct code failed to type-check:\n{report}"
    first = len(_bad_module().splitlines()) - len(BAD) + 1
    for offset, (code, words) in enumerate(BAD):
        found = re.findall(rf"bad\.py:{first + offset}: error: (.*)", report)
        assert any(words in line for line in found), f"mypy did not catch `{code}` ({words}):\n{report}"


def test_client_md_typed_stub_block_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/CLIENT.md's typed-stub block, as written, against a server on the demo models."""
    server = ThreadedServer(
        ServerConfig(models=ROOT / "models", port=0, metrics_port=0, poll_interval=0, backend="torch")
    )
    try:
        body = _client_md_block().replace("localhost:50051", server.target)
        exec(compile(body, "docs/CLIENT.md", "exec"), {"__name__": "docs_block"})
    finally:
        server.stop()
    assert capsys.readouterr().out == "townlet-L1-mlp ['townlet-L1-mlp', 'townlet-L2-lstm']\n"
