"""InflightBudget without a server: refusals name the flag, held bytes come back however the body ends."""

from __future__ import annotations

import pytest

from hamlet_client.proto import tensor_pb2
from hamlet_server.budget import InflightBudget, InflightBudgetError, tensor_bytes


def test_hold_refuses_past_the_limit_and_counts_nothing_for_a_refusal() -> None:
    budget = InflightBudget(1000)
    with budget.hold(600):
        assert budget.in_use == 600
        with pytest.raises(InflightBudgetError, match=r"already hold 0\.0 MiB .*--max-inflight-mb"):
            budget.acquire(401)
        assert budget.in_use == 600
        with budget.hold(400):
            assert budget.in_use == 1000
    assert budget.in_use == 0 and budget.refused == 1


def test_a_request_larger_than_the_whole_budget_says_to_split_it() -> None:
    with pytest.raises(InflightBudgetError, match=r"more than the server's whole in-flight budget.*split"):
        InflightBudget(1024 * 1024).acquire(2 * 1024 * 1024)


def test_held_bytes_come_back_when_the_body_raises() -> None:
    budget = InflightBudget(100)
    with pytest.raises(KeyError), budget.hold(80):
        raise KeyError("the step failed")
    assert budget.in_use == 0


def test_tensor_bytes_counts_what_the_shapes_declare_and_nothing_for_an_impossible_tensor() -> None:
    obs = tensor_pb2.Tensor(shape=[2, 3], dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=bytes(24))
    mask = tensor_pb2.Tensor(shape=[2, 6], dtype=tensor_pb2.DATA_TYPE_BOOL)
    assert tensor_bytes(obs, mask, tensor_pb2.Tensor(), None, most=1000) == 24 + 12
    huge = tensor_pb2.Tensor(shape=[10**12, 91], dtype=tensor_pb2.DATA_TYPE_FLOAT32)  # no message holds it
    unknown = tensor_pb2.Tensor(shape=[4], dtype=99)
    assert tensor_bytes(huge, unknown, most=16 * 2**20) == 0  # left to decoding, which refuses them


def test_a_budget_below_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 1 byte"):
        InflightBudget(0)
