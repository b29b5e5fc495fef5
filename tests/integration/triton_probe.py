"""tritonclient against a Hamlet server, in a process of its own (for tests/integration/test_open_inference.py).

tritonclient registers the v2 messages (``inference.*``) in protobuf's default pool under its own file name,
and so does the server's ``hamlet_server._generated_v2``: one process cannot import both. The test runs
this script with a target, a token, a file of input arrays and an output folder; the script makes its calls
with the real ``tritonclient.grpc`` client (and its own generated stub, for typed contents), then writes
``report.json`` (booleans, metadata, status codes) and ``outputs.npz`` (every output array).

    python triton_probe.py TARGET TOKEN INPUTS.npz OUT_DIR [--only-live]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

L1, L2 = "townlet-L1-mlp", "townlet-L2-lstm"


def _status(call: Callable[[], Any]) -> str:
    """The gRPC status name a call ends with ("OK" when it succeeds)."""
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status()).removeprefix("StatusCode.")
    return "OK"


def _inputs(arrays: dict[str, np.ndarray]) -> list[tc.InferInput]:
    inputs = []
    for name, array in arrays.items():
        datatype = {np.dtype(np.float32): "FP32", np.dtype(np.bool_): "BOOL", np.dtype(np.float64): "FP64"}[array.dtype]
        tensor = tc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _typed_infer(target: str, headers: dict[str, str], model: str, arrays: dict[str, np.ndarray]) -> Any:
    """ModelInfer with typed contents (fp32_contents) instead of raw bytes, through tritonclient's own stub."""
    import grpc

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        tensor = request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    with grpc.insecure_channel(target) as channel:
        return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=list(headers.items()))


def probe(target: str, token: str, data: dict[str, np.ndarray], out: Path) -> None:
    headers = {"authorization": f"Bearer {token}"}
    client = tc.InferenceServerClient(target)
    report: dict[str, Any] = {"versions": {}, "ready": {}, "metadata": {}, "status": {}}
    outputs: dict[str, np.ndarray] = {}
    report["live"] = client.is_server_live(headers=headers)
    report["server_ready"] = client.is_server_ready(headers=headers)
    report["server_metadata"] = client.get_server_metadata(headers=headers, as_json=True)
    for model in (L1, L2):
        meta = client.get_model_metadata(model, headers=headers, as_json=True)
        report["metadata"][model] = meta
        version = meta["versions"][-1]
        report["ready"][model] = client.is_model_ready(model, headers=headers)
        report["ready"][f"{model}@{version}"] = client.is_model_ready(model, version, headers=headers)
    report["ready"]["no-such-model"] = client.is_model_ready("no-such-model", headers=headers)
    report["ready"][f"{L1}@999999"] = client.is_model_ready(L1, "999999", headers=headers)

    l1 = client.infer(L1, _inputs({"observations": data["obs_l1"], "epsilon": np.zeros(1, np.float32)}),
                      headers=headers)  # fmt: skip
    report["versions"][L1] = l1.get_response().model_version
    outputs["l1_q"], outputs["l1_actions"] = l1.as_numpy("q_values"), l1.as_numpy("actions")
    first = client.infer(L2, _inputs({"observations": data["obs_l2"]}), headers=headers)
    outputs["l2_q"], outputs["l2_h"], outputs["l2_c"] = (
        first.as_numpy(n) for n in ("q_values", "hidden_h", "hidden_c")
    )
    feed = {"observations": data["obs_l2_next"], "hidden_h": outputs["l2_h"], "hidden_c": outputs["l2_c"]}
    second = client.infer(L2, _inputs(feed), headers=headers)
    report["versions"][L2] = second.get_response().model_version
    outputs["l2_next_q"], outputs["l2_next_actions"] = second.as_numpy("q_values"), second.as_numpy("actions")
    outputs["l2_next_h"] = second.as_numpy("hidden_h")
    typed = _typed_infer(target, headers, L2, feed)
    outputs["l2_typed_q"] = np.frombuffer(typed.raw_output_contents[0], "<f4").reshape(tuple(typed.outputs[0].shape))
    only = client.infer(L1, _inputs({"observations": data["obs_l1"]}), headers=headers,
                        outputs=[tc.InferRequestedOutput("actions")])  # fmt: skip
    report["only_actions"] = [o.name for o in only.get_response().outputs]

    obs = data["obs_l1"]

    def infer(model: str, arrays: dict[str, np.ndarray], **options: Any) -> Callable[[], Any]:
        return lambda: client.infer(model, _inputs(arrays), **{"headers": headers, **options})

    calls = {
        "no_token": infer(L1, {"observations": obs}, headers=None),
        "narrow_obs": infer(L1, {"observations": obs[:, :90].copy()}),
        "fp64_obs": infer(L1, {"observations": obs.astype(np.float64)}),
        "unknown_input": infer(L1, {"observations": obs, "temperature": np.ones(1, np.float32)}),
        "epsilon_above_one": infer(L1, {"observations": obs, "epsilon": np.full(1, 1.5, np.float32)}),
        "unknown_model": infer("no-such-model", {"observations": obs}),
        "unknown_version": infer(L1, {"observations": obs}, model_version="999999"),
        "unknown_output": infer(L1, {"observations": obs}, outputs=[tc.InferRequestedOutput("hidden_h")]),
    }
    report["status"] = {name: _status(call) for name, call in calls.items()}
    (out / "report.json").write_text(json.dumps(report))
    np.savez(out / "outputs.npz", **outputs)


def probe_live(target: str, out: Path) -> None:
    """Against a server without --open-inference: what ServerLive answers."""
    client = tc.InferenceServerClient(target)
    (out / "report.json").write_text(json.dumps({"live_status": _status(client.is_server_live)}))


if __name__ == "__main__":
    target, token, inputs, out_dir = sys.argv[1:5]
    if "--only-live" in sys.argv:
        probe_live(target, Path(out_dir))
    else:
        probe(target, token, dict(np.load(inputs)), Path(out_dir))
