"""refuse_oversized: a response over the message limit is refused (and only then), whatever its shape; its cheap
bound (no serialization) never lets an oversized response through."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_server.servicer import refuse_oversized
from hamlet_server.status import RequestError
from hamlet_server.tensor_codec import encode_hidden, encode_tensor


def _response(rows: int, hidden: int, name: str, action: int) -> tuple[pb.PredictResponse, int]:
    response = pb.PredictResponse(model=name, version=2**62, actions=[action] * rows)
    encode_tensor(np.zeros((rows, 6), np.float32), response.q_values)
    if hidden:
        encode_hidden((torch.zeros(1, rows, hidden), torch.zeros(1, rows, hidden)), response.hidden)
    tensors = len(response.q_values.data) + len(response.hidden.h.data) + len(response.hidden.c.data)
    return response, tensors


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 300),
    hidden=st.sampled_from([0, 8, 256]),
    name=st.text(max_size=255),
    action=st.sampled_from([0, 5, 2**63 - 1]),
    limit=st.integers(8_192, 700_000),  # the server limit is at least 1 MiB
)
def test_refused_exactly_when_over_the_limit(rows, hidden, name, action, limit):
    response, tensors = _response(rows, hidden, name, action)
    size = response.ByteSize()
    if size <= limit:
        refuse_oversized(response, limit, rows, tensors, "obs", "send at most {fit} rows")
        return
    with pytest.raises(RequestError) as info:
        refuse_oversized(response, limit, rows, tensors, "obs", "send at most {fit} rows")
    assert (info.value.code, info.value.error_reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RESPONSE_TOO_LARGE")
    assert info.value.message.startswith(f"obs: the response for {rows} rows would be {size} bytes")
    fit = int(info.value.message.rsplit("send at most ", 1)[1].split()[0])
    assert _response(fit, hidden, name, action)[0].ByteSize() <= limit  # the advice is right
