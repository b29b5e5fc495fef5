"""The Open Inference Protocol v2 (KServe / Triton ``inference.GRPCInferenceService``) over hamlet.v1 Predict.

With ``--open-inference`` the server also answers tritonclient, perf_analyzer, KServe and Seldon clients on
its gRPC port: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer (the other
v2 methods answer UNIMPLEMENTED). ModelInfer is translated into a hamlet.v1 `PredictRequest` and answered by
`InferenceServicer.predict`, the code path of Predict itself: same validation, errors, batching and
Q-values. Readiness and metadata come from the model repository.

    inputs   observations  FP32  [B, obs_dim] (or [obs_dim]: a batch of one)
             hidden_h      FP32  [B, H] or [1, B, H]   recurrent models only, with hidden_c; absent: zeros
             hidden_c      FP32  [B, H] or [1, B, H]
             epsilon       FP32  [1]                   absent: 0 (greedy)
             action_mask   BOOL  [B, action_dim]        absent: every action allowed
    outputs  q_values      FP32  [B, action_dim]
             actions       INT64 [B]
             hidden_h      FP32  [B, H]                recurrent models only: the next state
             hidden_c      FP32  [B, H]

Model name: the repository's name (empty: the default model); version: the decimal version string
("500"; empty: the latest). Inputs may come as ``raw_input_contents`` (little-endian, one entry per input)
or typed ``contents``; outputs go back as ``raw_output_contents``, as Triton sends them. Metrics count
ModelMetadata and ModelInfer as methods ``v2.ModelMetadata`` and ``v2.ModelInfer`` (any v2 failure as
``v2.<Method>``); the liveness and readiness probes are not counted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import tensor_pb2
from hamlet_server._generated_v2.inference import grpc_service_pb2 as v2
from hamlet_server.repository import ServedModel
from hamlet_server.servicer import InferenceServicer, Malformed, lenient, server_version
from hamlet_server.status import RequestError, rich_status, status_for, truncate

__all__ = [
    "INPUTS",
    "OUTPUTS",
    "V2_SERVICE_NAME",
    "OpenInferenceServicer",
    "add_open_inference",
    "infer_response",
    "model_metadata",
    "predict_request",
]

SC = grpc.StatusCode
V2_SERVICE_NAME: str = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass(frozen=True)
class _Type:
    """A v2 datatype as numpy, as hamlet.v1 and as the InferTensorContents field that holds it typed."""

    name: str
    numpy: np.dtype[Any]
    hamlet: tensor_pb2.DataType
    contents: str


_FP32 = _Type("FP32", np.dtype("<f4"), tensor_pb2.DATA_TYPE_FLOAT32, "fp32_contents")
_INT64 = _Type("INT64", np.dtype("<i8"), tensor_pb2.DATA_TYPE_INT64, "int64_contents")
_BOOL = _Type("BOOL", np.dtype("?"), tensor_pb2.DATA_TYPE_BOOL, "bool_contents")
INPUTS = {"observations": _FP32, "hidden_h": _FP32, "hidden_c": _FP32, "epsilon": _FP32, "action_mask": _BOOL}
OUTPUTS = ("q_values", "actions", "hidden_h", "hidden_c")


def _bad(message: str, reason: str = "BAD_ARGUMENT") -> RequestError:
    return RequestError(SC.INVALID_ARGUMENT, truncate(message), reason)


# ---- ModelInferRequest -> PredictRequest ---------------------------------------------------------------
def _input_bytes(tensor: v2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> tuple[list[int], bytes]:
    """``(shape, little-endian bytes)`` of one input, from its raw contents or its typed ones, checked."""
    kind = INPUTS.get(tensor.name)
    if kind is None:
        raise _bad(f"inputs: unknown input {tensor.name!r}; this server takes {sorted(INPUTS)}")
    if tensor.datatype != kind.name:
        raise _bad(f"{tensor.name}: expected datatype {kind.name}, got {tensor.datatype!r}", "BAD_TENSOR")
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise _bad(f"{tensor.name}: shape {shape} has a negative dimension", "BAD_TENSOR")
    count = math.prod(shape)
    if raw is None:
        values = getattr(tensor.contents, kind.contents)
        if len(values) != count:
            raise _bad(f"{tensor.name}: shape {shape} holds {count} values, got {len(values)} in "
                       f"contents.{kind.contents}", "BAD_TENSOR")  # fmt: skip
        return shape, np.asarray(values, dtype=kind.numpy).tobytes()
    if len(raw) != count * kind.numpy.itemsize:
        raise _bad(f"{tensor.name}: shape {shape} of {kind.name} needs {count * kind.numpy.itemsize} bytes, got "
                   f"{len(raw)} in raw_input_contents", "BAD_TENSOR")  # fmt: skip
    return shape, raw


def _inputs(request: v2.ModelInferRequest) -> dict[str, tuple[list[int], bytes]]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise _bad(f"raw_input_contents: expected one entry per input ({len(request.inputs)}), got {len(raw)}; "
                   "send every input raw or every input in contents")  # fmt: skip
    found: dict[str, tuple[list[int], bytes]] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in found:
            raise _bad(f"inputs: {tensor.name!r} given twice")
        found[tensor.name] = _input_bytes(tensor, raw[i] if raw else None)
    if "observations" not in found:
        raise _bad(f"inputs: expected 'observations' (FP32 [B, obs_dim]), got {sorted(found) or 'none'}")
    if ("hidden_h" in found) != ("hidden_c" in found):
        raise _bad("inputs: give both hidden_h and hidden_c (FP32 [B, H]) or neither (zeros)")
    return found


def _tensor(shape: list[int], data: bytes, dtype: tensor_pb2.DataType, out: tensor_pb2.Tensor) -> None:
    out.shape[:] = shape
    out.dtype = dtype
    out.data = data


def predict_request(request: v2.ModelInferRequest) -> pb.PredictRequest:
    """The hamlet.v1 PredictRequest a ModelInfer asks for; raises `RequestError` (INVALID_ARGUMENT) when the
    request is not one (unknown or missing input, wrong datatype, byte count, version)."""
    out = pb.PredictRequest(model=request.model_name)
    if request.model_version:
        try:
            out.version = int(request.model_version)
        except ValueError:
            raise _bad(f"model_version: expected a version number (e.g. '500') or empty for the latest, got "
                       f"{request.model_version!r}") from None  # fmt: skip
    inputs = _inputs(request)
    _tensor(*inputs["observations"], tensor_pb2.DATA_TYPE_FLOAT32, out.observations)
    if "hidden_h" in inputs:
        for name, part in (("hidden_h", out.hidden.h), ("hidden_c", out.hidden.c)):
            shape, data = inputs[name]
            _tensor([1, *shape] if len(shape) == 2 else shape, data, tensor_pb2.DATA_TYPE_FLOAT32, part)
    if "epsilon" in inputs:
        shape, data = inputs["epsilon"]
        if math.prod(shape) != 1:
            raise _bad(f"epsilon: expected one FP32 value (shape [1]), got shape {shape}", "BAD_EPSILON")
        out.epsilon = float(np.frombuffer(data, dtype="<f4")[0])
    if "action_mask" in inputs:
        _tensor(*inputs["action_mask"], tensor_pb2.DATA_TYPE_BOOL, out.action_mask)
    return out


# ---- PredictResponse -> ModelInferResponse -------------------------------------------------------------
def _outputs(response: pb.PredictResponse) -> dict[str, tuple[str, list[int], bytes]]:
    """Every output of `response` as ``name -> (datatype, shape, bytes)``; hidden ``[1, B, H]`` -> ``[B, H]``."""
    found = {
        "q_values": ("FP32", list(response.q_values.shape), response.q_values.data),
        "actions": ("INT64", [len(response.actions)], np.asarray(response.actions, dtype="<i8").tobytes()),
    }
    if response.HasField("hidden"):
        for name, part in (("hidden_h", response.hidden.h), ("hidden_c", response.hidden.c)):
            found[name] = ("FP32", list(part.shape)[1:], part.data)
    return found


def infer_response(response: pb.PredictResponse, request: v2.ModelInferRequest) -> v2.ModelInferResponse:
    """The ModelInferResponse for `request` from Predict's `response`: the requested outputs (every one when
    none is named) in ``raw_output_contents``."""
    available = _outputs(response)
    wanted = [o.name for o in request.outputs] or list(available)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        raise _bad(f"outputs: {unknown} not produced by model {response.model!r}; it gives {list(available)}")
    out = v2.ModelInferResponse(model_name=response.model, model_version=str(response.version), id=request.id)
    for name in wanted:
        datatype, shape, data = available[name]
        out.outputs.add(name=name, datatype=datatype, shape=shape)
        out.raw_output_contents.append(data)
    return out


# ---- metadata ------------------------------------------------------------------------------------------
def model_metadata(served: ServedModel, versions: list[int], backend: str) -> v2.ModelMetadataResponse:
    """The v2 metadata of a loaded version: its tensors with their shapes (-1: the batch dimension)."""
    response = v2.ModelMetadataResponse(
        name=served.name, versions=[str(v) for v in versions], platform=f"hamlet_{backend}"
    )
    obs, a, h = served.obs_dim, served.action_dim, served.hidden_dim
    hidden = [("hidden_h", "FP32", [-1, h]), ("hidden_c", "FP32", [-1, h])] if served.is_recurrent else []
    inputs = [("observations", "FP32", [-1, obs]), *hidden, ("epsilon", "FP32", [1]), ("action_mask", "BOOL", [-1, a])]
    for name, datatype, shape in inputs:
        response.inputs.add(name=name, datatype=datatype, shape=shape)
    for name, datatype, shape in [("q_values", "FP32", [-1, a]), ("actions", "INT64", [-1]), *hidden]:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
    return response


def _version(text: str, field: str) -> int | None:
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise _bad(f"{field}: expected a version number (e.g. '500') or empty for the latest, got {text!r}") from None


# ---- the servicer --------------------------------------------------------------------------------------
class OpenInferenceServicer:
    """inference.GRPCInferenceService on grpc.aio, answered by a hamlet.v1 `InferenceServicer`."""

    def __init__(self, hamlet: InferenceServicer) -> None:
        self.hamlet = hamlet
        self.repository = hamlet.repository
        self._latency = hamlet.metrics.latency.labels("v2.ModelInfer")

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], method: str, exc: BaseException) -> None:
        code, message, reason = status_for(exc)
        self.hamlet.metrics.record(f"v2.{method}", code.name)
        await context.abort_with_status(rich_status(code, message, reason))

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=bool(self.repository.names()) and not self.hamlet.draining)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> v2.ModelReadyResponse:
        """Ready: the model has a servable version and, when one is named, that version is on disk (an older
        version loads on its first request; one that fails to load answers FAILED_PRECONDITION then)."""
        try:
            _reject_malformed(request)
            version = _version(request.version, "version")
        except RequestError as exc:
            await self._fail(context, "ModelReady", exc)
        name = request.name or self.repository.default_model
        servable = name in self.repository.names() and not self.hamlet.draining
        ready = servable and (version is None or version in self.repository.versions_on_disk(name))
        return v2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="hamlet-server", version=server_version())

    async def ModelMetadata(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> v2.ModelMetadataResponse:
        try:
            _reject_malformed(request)
            served = await self.repository.acquire(request.name, _version(request.version, "version"))
            try:
                versions = self.repository.versions_on_disk(served.name)
                response = model_metadata(served, versions, self.hamlet.backend)
            finally:
                served.release()
        except Exception as exc:
            await self._fail(context, "ModelMetadata", exc)
        self.hamlet.metrics.record("v2.ModelMetadata", "OK")
        return response

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> v2.ModelInferResponse:
        started = time.perf_counter()
        try:
            _reject_malformed(request)
            response = infer_response(await self.hamlet.predict(predict_request(request)), request)
        except Exception as exc:
            await self._fail(context, "ModelInfer", exc)
        self.hamlet.metrics.record("v2.ModelInfer", "OK")
        self._latency.observe(time.perf_counter() - started)
        return response


def _reject_malformed(request: Any) -> None:
    if isinstance(request, Malformed):
        raise _bad(f"the request bytes are not a valid inference.{request.message_type} ({request.error}); send "
                   "messages serialized from the Open Inference Protocol v2 protos", "MALFORMED_MESSAGE")  # fmt: skip


def add_open_inference(hamlet: InferenceServicer, server: grpc.aio.Server) -> str:
    """Register inference.GRPCInferenceService on `server`, answered by `hamlet`; returns its service name."""
    servicer = OpenInferenceServicer(hamlet)
    handlers = {}
    for method in v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request, response = (getattr(v2, m.name) for m in (method.input_type, method.output_type))
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=lenient(request.FromString, request.__name__),
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V2_SERVICE_NAME, handlers),))
    return V2_SERVICE_NAME
