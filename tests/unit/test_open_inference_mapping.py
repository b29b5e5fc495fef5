"""The Open Inference Protocol v2 <-> hamlet.v1 Predict translation, without a network (hamlet_server.open_inference).

Every bad request is refused with INVALID_ARGUMENT and a message naming the input and what was expected;
raw and typed contents give the same PredictRequest; hidden ``[B, H]`` becomes Predict's ``[1, B, H]`` and
back. (tritonclient itself is exercised in tests/integration/test_open_inference.py, in its own process.)
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import tensor_pb2
from hamlet_server._generated_v2.inference import grpc_service_pb2 as v2
from hamlet_server.open_inference import infer_response, predict_request
from hamlet_server.status import RequestError

RNG = np.random.default_rng(7)


def _request(arrays: dict[str, np.ndarray], *, raw: bool = True, **fields: str) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name="m", **fields)
    for name, array in arrays.items():
        datatype = {np.dtype(np.float32): "FP32", np.dtype(np.bool_): "BOOL", np.dtype(np.float64): "FP64"}
        tensor = request.inputs.add(name=name, datatype=datatype[array.dtype], shape=list(array.shape))
        if raw:
            request.raw_input_contents.append(array.tobytes())
        elif array.dtype == np.bool_:
            tensor.contents.bool_contents.extend(array.ravel().tolist())
        else:
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return request


def _refused(request: v2.ModelInferRequest, *words: str) -> RequestError:
    with pytest.raises(RequestError) as caught:
        predict_request(request)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert all(w in caught.value.message for w in words), caught.value.message
    return caught.value


def _array(msg: tensor_pb2.Tensor, dtype: str = "<f4") -> np.ndarray:
    return np.frombuffer(msg.data, dtype=dtype).reshape(tuple(msg.shape))


def test_raw_and_typed_contents_make_the_same_predict_request() -> None:
    arrays = {
        "observations": RNG.random((3, 54), dtype=np.float32),
        "hidden_h": RNG.random((3, 8), dtype=np.float32),
        "hidden_c": RNG.random((3, 8), dtype=np.float32),
        "epsilon": np.array([0.25], np.float32),
        "action_mask": np.array([[True, False]] * 3),
    }
    raw = predict_request(_request(arrays, model_version="500"))
    assert raw == predict_request(_request(arrays, raw=False, model_version="500"))
    assert raw.model == "m" and raw.version == 500 and raw.epsilon == 0.25
    assert np.array_equal(_array(raw.observations), arrays["observations"])
    assert list(raw.hidden.h.shape) == [1, 3, 8] and np.array_equal(_array(raw.hidden.c)[0], arrays["hidden_c"])
    assert raw.action_mask.dtype == tensor_pb2.DATA_TYPE_BOOL
    assert np.array_equal(_array(raw.action_mask, "?"), arrays["action_mask"])


def test_hidden_in_predicts_own_layout_is_taken_as_is_and_absent_fields_stay_absent() -> None:
    h = RNG.random((1, 2, 8), dtype=np.float32)
    request = predict_request(_request({"observations": np.zeros((2, 91), np.float32), "hidden_h": h, "hidden_c": h}))
    assert list(request.hidden.h.shape) == [1, 2, 8]
    bare = predict_request(_request({"observations": np.zeros((2, 91), np.float32)}))
    assert not bare.HasField("version") and not bare.HasField("hidden") and not bare.HasField("action_mask")
    assert bare.epsilon == 0.0


@pytest.mark.parametrize(
    ("arrays", "fields", "words"),
    [
        ({"obs": np.zeros((1, 91), np.float32)}, {}, ("unknown input 'obs'", "observations")),
        ({"observations": np.zeros((1, 91), np.float64)}, {}, ("observations", "expected datatype FP32", "FP64")),
        ({"epsilon": np.zeros(1, np.float32)}, {}, ("expected 'observations'",)),
        ({"observations": np.zeros((1, 54), np.float32), "hidden_h": np.zeros((1, 8), np.float32)}, {},
         ("both hidden_h and hidden_c",)),
        ({"observations": np.zeros((1, 91), np.float32), "epsilon": np.zeros(2, np.float32)}, {},
         ("epsilon", "one FP32 value", "[2]")),
        ({"observations": np.zeros((1, 91), np.float32)}, {"model_version": "latest"},
         ("model_version", "'latest'")),
    ],
    ids=["unknown-input", "datatype", "no-observations", "half-hidden", "epsilon-shape", "version"],
)  # fmt: skip
def test_a_request_that_is_not_a_predict_is_refused(arrays: dict[str, np.ndarray], fields: dict[str, str],
                                                    words: tuple[str, ...]) -> None:  # fmt: skip
    _refused(_request(arrays, **fields), *words)


def test_byte_and_value_counts_must_fit_the_shape() -> None:
    request = _request({"observations": np.zeros((2, 91), np.float32)})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    error = _refused(request, "observations", "[2, 91]", "728 bytes", "724")
    assert error.error_reason == "BAD_TENSOR"
    typed = _request({"observations": np.zeros((2, 91), np.float32)}, raw=False)
    typed.inputs[0].shape[:] = [2, 92]
    _refused(typed, "observations", "holds 184 values", "got 182")
    negative = _request({"observations": np.zeros((2, 91), np.float32)})
    negative.inputs[0].shape[:] = [-2, 91]
    _refused(negative, "negative dimension")


def test_raw_contents_must_cover_every_input_and_names_must_not_repeat() -> None:
    arrays = {"observations": np.zeros((1, 91), np.float32), "epsilon": np.zeros(1, np.float32)}
    partial = _request(arrays)
    del partial.raw_input_contents[1]
    _refused(partial, "raw_input_contents", "one entry per input (2), got 1")
    twice = _request({"observations": np.zeros((1, 91), np.float32)})
    twice.inputs.append(twice.inputs[0])
    twice.raw_input_contents.append(twice.raw_input_contents[0])
    _refused(twice, "'observations' given twice")


def _predicted(recurrent: bool) -> pb.PredictResponse:
    response = pb.PredictResponse(model="m", version=7, actions=[3, 1])
    q = RNG.random((2, 6), dtype=np.float32)
    response.q_values.CopyFrom(tensor_pb2.Tensor(shape=[2, 6], dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=q.tobytes()))
    if recurrent:
        for part in (response.hidden.h, response.hidden.c):
            h = RNG.random((1, 2, 8), dtype=np.float32)
            part.CopyFrom(tensor_pb2.Tensor(shape=[1, 2, 8], dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=h.tobytes()))
    return response


def test_every_output_goes_back_raw_with_hidden_batch_first() -> None:
    predicted = _predicted(recurrent=True)
    out = infer_response(predicted, v2.ModelInferRequest(id="req-1"))
    assert (out.model_name, out.model_version, out.id) == ("m", "7", "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in out.outputs] == [
        ("q_values", "FP32", [2, 6]), ("actions", "INT64", [2]), ("hidden_h", "FP32", [2, 8]),
        ("hidden_c", "FP32", [2, 8]),
    ]  # fmt: skip
    assert out.raw_output_contents[0] == predicted.q_values.data
    assert np.frombuffer(out.raw_output_contents[1], "<i8").tolist() == [3, 1]
    assert out.raw_output_contents[3] == predicted.hidden.c.data


def test_requested_outputs_narrow_the_answer_and_unknown_ones_are_refused() -> None:
    request = v2.ModelInferRequest()
    request.outputs.add(name="actions")
    out = infer_response(_predicted(recurrent=False), request)
    assert [o.name for o in out.outputs] == ["actions"] and len(out.raw_output_contents) == 1
    request.outputs.add(name="hidden_h")
    with pytest.raises(RequestError) as caught:
        infer_response(_predicted(recurrent=False), request)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT and "['hidden_h']" in caught.value.message
