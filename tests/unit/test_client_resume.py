"""The client's replica plumbing without a network: target lists become one balanced gRPC target, and the
resume bookkeeping decides when an interruption can be hidden."""

from __future__ import annotations

import grpc
import pytest

from hamlet_client import (
    CapacityExceededError,
    InvalidArgumentError,
    ServerDrainingError,
    SessionExpiredError,
    UnavailableError,
)
from hamlet_client.connection import channel_target
from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.resume import ResumeState, is_resumable


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("localhost:50051", ("localhost:50051", False)),
        ("dns:///hamlet-serve-headless.ns.svc.cluster.local:50051",
         ("dns:///hamlet-serve-headless.ns.svc.cluster.local:50051", True)),
        (["127.0.0.1:1", "localhost:2", "10.0.0.3:3"], ("ipv4:127.0.0.1:1,127.0.0.1:2,10.0.0.3:3", True)),
        (["[::1]:1", "[::1]:2"], ("ipv6:[::1]:1,[::1]:2", True)),
        (["127.0.0.1:7"], ("127.0.0.1:7", False)),
    ],
)  # fmt: skip
def test_targets_become_one_balanced_channel_target(target, expected) -> None:
    assert channel_target(target) == expected


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "empty string"),
        ([], "non-empty list"),
        (["replica-a:1", "replica-b:2"], "not an IP address.*dns:///"),
        (["127.0.0.1:1", "[::1]:2"], "mix of IPv4 and IPv6"),
        (["127.0.0.1", "127.0.0.2:1"], "ip:port"),
    ],
)
def test_bad_targets_say_what_to_pass(target, message) -> None:
    with pytest.raises(ValueError, match=message):
        channel_target(target)


def _snapshot(step_index: int) -> pb.EpisodeSnapshot:
    return pb.EpisodeSnapshot(state=pb.EpisodeState(format_version=1, step_index=step_index).SerializeToString())


def test_only_a_current_snapshot_and_a_server_side_end_resume() -> None:
    state = ResumeState()
    drained = ServerDrainingError("draining", grpc.StatusCode.UNAVAILABLE, end_reason="server_draining")
    assert not state.can_resume(drained, 3)  # nothing kept yet
    state.keep(_snapshot(3))
    assert state.snapshot_step == 3 and state.can_resume(drained, 3)
    assert not state.can_resume(drained, 4)  # an older snapshot would replay steps the simulator moved past
    assert state.can_resume(UnavailableError("socket closed"), 3)  # a replica killed without warning
    assert state.can_resume(SessionExpiredError("idle", end_reason="idle_timeout"), 3)
    bad = InvalidArgumentError("observations: ...", grpc.StatusCode.INVALID_ARGUMENT, end_reason="bad_request")
    assert not state.can_resume(bad, 3) and not is_resumable(CapacityExceededError("full"))
    start = state.start_request().start
    assert start.resume_from == _snapshot(3) and start.snapshot_every == 1


def test_reopen_attempts_back_off() -> None:
    assert list(ResumeState(max_attempts=4, backoff=0.1).waits()) == [0.0, 0.1, 0.2, 0.4]
