"""Errors a machine can read: every error status carries google.rpc details the standard way
(grpc-status-details-bin): an ErrorInfo with a stable reason and domain hamlet.v1, and a BadRequest naming
the field for bad input; both clients expose the reason; a server fault is INTERNAL, not the client's fault."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from server_helpers import LSTM, MLP, enc, read_to_end, start_msg, step_msg

from hamlet_client import AsyncHamletClient, ModelNotFoundError
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import tensor_pb2


def _details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[tuple[str, str]]]:
    raw = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0] and status.message == error.details()
    info, violations = error_details_pb2.ErrorInfo(), []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations += [(v.field, v.description) for v in bad.field_violations]
        else:
            assert detail.Unpack(info)
    return info, violations


@pytest.mark.parametrize(
    ("request_kwargs", "code", "reason", "field"),
    [
        ({"model": MLP, "observations": enc(np.zeros((1, 54), np.float32))}, "INVALID_ARGUMENT",
         "OBS_WIDTH_MISMATCH", "observations"),
        ({"model": MLP, "epsilon": 3.0, "observations": enc(np.zeros((1, 91), np.float32))}, "INVALID_ARGUMENT",
         "BAD_EPSILON", "epsilon"),
        ({"model": MLP}, "INVALID_ARGUMENT", "MISSING_FIELD", "observations"),
        ({"model": MLP, "observations": tensor_pb2.Tensor(shape=[1] * 70, dtype=tensor_pb2.DATA_TYPE_FLOAT32,
                                                           data=b"\0" * 4)}, "INVALID_ARGUMENT", "BAD_TENSOR",
         "observations"),
        ({"model": MLP, "observations": enc(np.zeros((1, 91), np.float32)),
          "action_mask": tensor_pb2.Tensor(shape=[1] * 65, dtype=tensor_pb2.DATA_TYPE_BOOL, data=b"\1")},
         "INVALID_ARGUMENT", "BAD_TENSOR", "action_mask"),
        ({"model": LSTM, "observations": enc(np.zeros((1, 54), np.float32)),
          "hidden": tensor_pb2.HiddenState(c=enc(np.zeros((1, 1, 256), np.float32)))},
         "INVALID_ARGUMENT", "MISSING_FIELD", "hidden.h"),
        ({"model": "nope", "observations": enc(np.zeros((1, 91), np.float32))}, "NOT_FOUND", "UNKNOWN_MODEL", None),
        ({"model": MLP, "version": 9, "observations": enc(np.zeros((1, 91), np.float32))}, "NOT_FOUND",
         "UNKNOWN_VERSION", None),
    ],
)  # fmt: skip
async def test_predict_errors_carry_error_info_and_field_violations(stub, request_kwargs, code, reason, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Predict(pb.PredictRequest(**request_kwargs))
    assert caught.value.code().name == code
    info, violations = _details(caught.value)
    assert (info.reason, info.domain) == (reason, "hamlet.v1")
    assert [f for f, _ in violations] == ([field] if field else [])


async def test_stream_errors_carry_the_same_details(stub):
    call = stub.StreamEpisode()
    await call.write(start_msg(LSTM, 2))
    await call.write(step_msg(np.zeros((2, 91), np.float32)))
    responses, error = await read_to_end(call)
    info, violations = _details(error)
    assert info.reason == "OBS_WIDTH_MISMATCH" == responses[-1].ended.error_reason
    assert violations[0][0] == "observations"


async def test_the_asyncio_client_exposes_the_reason(server):
    async with AsyncHamletClient(f"127.0.0.1:{server.port}", timeout=30.0) as client:
        with pytest.raises(ModelNotFoundError) as missing:
            await client.predict(np.zeros(91, np.float32), model="nope")
        assert missing.value.reason == "UNKNOWN_MODEL"


async def test_an_unexpected_exception_is_internal_and_logged(server, stub, monkeypatch, caplog):
    served = server.repository.latest(MLP)

    async def broken(item):
        raise RuntimeError("a bug in the server")

    monkeypatch.setattr(served.batcher, "submit", broken)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Predict(pb.PredictRequest(model=MLP, observations=enc(np.zeros((1, 91), np.float32))))
    assert caught.value.code() == grpc.StatusCode.INTERNAL and "RuntimeError" in caught.value.details()
    assert _details(caught.value)[0].reason == "INTERNAL"
    assert any("internal error" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


async def test_server_info_tells_clients_the_limits(server_factory):
    server = await server_factory(max_envs=32, max_predict_batch=100, session_ttl=12.5, start_timeout=3.0,
                                  max_sessions=7, max_slots=4096)  # fmt: skip
    async with AsyncHamletClient(f"127.0.0.1:{server.port}", timeout=30.0) as client:
        info = await client.server_info()
    assert (info.max_envs, info.max_predict_batch, info.max_sessions, info.max_slots) == (32, 100, 7, 4096)
    assert (info.session_ttl_seconds, info.start_timeout_seconds) == (12.5, 3.0)
    assert info.max_message_bytes == server.config.max_message_bytes and info.device == "cpu"
    assert info.backend == "torch" and info.server_version not in ("", "unknown")
