"""Who may sign an episode snapshot, and what a resumed state may hold (issue 21, section 1).

A snapshot is signed with the deployment's --snapshot-key-file, never the bearer token: a client that holds
the token still cannot forge one. A server without a key refuses to resume (FAILED_PRECONDITION naming the
flag) unless --allow-unsigned-snapshots; a rotation accepts the previous key and refuses an unknown one.
Every field of a signed state is checked by the rule a fresh start or step is held to, so even a leaked key
cannot crash a replica: each bad field is INVALID_ARGUMENT and the server keeps serving.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from live_server import write_snapshot_keys
from server_helpers import HIDDEN, LSTM, assert_ended, dec, enc, read_to_end, seal, step_msg

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_server.sessions import MAX_STEP_INDEX

ENVS, CUT = 4, 3
TOKEN = "s3cret-token-every-client-holds"
SC = grpc.StatusCode


def _obs(t: int) -> np.ndarray:
    return np.random.default_rng(100 + t).random((ENVS, 54), dtype=np.float32)


class _Stream:
    """One StreamEpisode call on ``port`` (with the bearer token when ``token``)."""

    def __init__(self, channel: grpc.aio.Channel, token: bool) -> None:
        metadata = (("authorization", f"Bearer {TOKEN}"),) if token else None
        self.call = pb_grpc.InferenceServiceStub(channel).StreamEpisode(metadata=metadata)

    async def start(self, start: pb.EpisodeStart) -> pb.StreamEpisodeResponse:
        await self.call.write(pb.StreamEpisodeRequest(start=start))
        return await self.call.read()

    async def step(self, t: int) -> pb.StreamEpisodeResponse:
        await self.call.write(step_msg(_obs(t)))
        return await self.call.read()


async def _snapshot(port: int, *, token: bool = False) -> tuple[pb.EpisodeSnapshot, list[np.ndarray]]:
    """Steps 0..CUT-1 of a seeded episode with a snapshot after the last; then the Q-values of steps CUT, CUT+1
    of the same episode run on (the reference a resume must reproduce)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = _Stream(channel, token)
        await stream.start(pb.EpisodeStart(model=LSTM, num_envs=ENVS, epsilon=0.3, seed=5, snapshot_every=CUT))
        for t in range(CUT):
            snapshot = (await stream.step(t)).step.snapshot
        reference = [dec((await stream.step(t)).step.q_values) for t in (CUT, CUT + 1)]
        await stream.call.done_writing()
    assert snapshot.state, "the server sent no snapshot"
    return snapshot, reference


async def _resume(port: int, snapshot: pb.EpisodeSnapshot, *, token: bool = False) -> list[np.ndarray]:
    """Resume ``snapshot`` and take two steps: their Q-values."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = _Stream(channel, token)
        started = await stream.start(pb.EpisodeStart(resume_from=snapshot))
        assert started.started.resumed and started.started.step_index == CUT, started
        q = [dec((await stream.step(t)).step.q_values) for t in (CUT, CUT + 1)]
        await stream.call.done_writing()
        assert await stream.call.code() == SC.OK
    return q


async def _refused(port: int, snapshot: pb.EpisodeSnapshot, *, token: bool = False) -> tuple[Any, Any]:
    """Resume ``snapshot``, expecting a refusal: (the in-band EpisodeEnded response, the final error)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = _Stream(channel, token)
        await stream.call.write(pb.StreamEpisodeRequest(start=pb.EpisodeStart(resume_from=snapshot)))
        responses, error = await read_to_end(stream.call)
    assert error is not None and responses, "the resume was not refused"
    return responses[-1], error


async def _still_serves(port: int, *, token: bool = False) -> None:
    """A fresh episode on ``port`` starts and steps."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = _Stream(channel, token)
        await stream.start(pb.EpisodeStart(model=LSTM, num_envs=ENVS))
        assert (await stream.step(0)).step.step_index == 0
        await stream.call.done_writing()
        assert await stream.call.code() == SC.OK


def _same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for q, q_ref in zip(got, want, strict=True):
        np.testing.assert_array_equal(q, q_ref)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_snapshot_keys(tmp_path / "snapshot-keys")


# ------------------------------------------------------------------------------------------ who may sign


async def test_a_client_holding_the_token_cannot_forge_a_snapshot(server_factory, tmp_path: Path, key_file) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = await server_factory(token_file=str(token_file), snapshot_key_file=str(key_file))
    snapshot, reference = await _snapshot(server.port, token=True)
    _same(await _resume(server.port, snapshot, token=True), reference)  # the real one resumes
    state = pb.EpisodeState.FromString(snapshot.state)
    half = np.full((ENVS, HIDDEN), 0.5, np.float32)
    state.hidden_h.CopyFrom(enc(half))
    state.hidden_c.CopyFrom(enc(half))
    payload = state.SerializeToString(deterministic=True)
    forged = pb.EpisodeSnapshot(
        state=payload,
        checksum=hashlib.sha256(payload).digest(),
        mac=hmac.new(TOKEN.encode(), payload, hashlib.sha256).digest(),  # what the old server checked
    )
    ended, error = await _refused(server.port, forged, token=True)
    assert error.code() == SC.PERMISSION_DENIED and "not signed with this server's snapshot keys" in error.details()
    assert_ended(ended, "bad_request", SC.PERMISSION_DENIED, "SNAPSHOT_FORGED")


async def test_a_keyed_server_refuses_an_unsigned_snapshot(server_factory, key_file: Path) -> None:
    local = await server_factory(allow_unsigned_snapshots=True)
    keyed = await server_factory(snapshot_key_file=str(key_file))
    unsigned, _ = await _snapshot(local.port)
    assert unsigned.mac == b""
    ended, error = await _refused(keyed.port, unsigned)
    assert error.code() == SC.PERMISSION_DENIED and "unsigned" in error.details()
    assert_ended(ended, "bad_request", SC.PERMISSION_DENIED, "SNAPSHOT_FORGED")


async def test_a_server_without_a_key_sends_snapshots_but_refuses_to_resume_naming_the_flag(server_factory) -> None:
    server = await server_factory()
    snapshot, _ = await _snapshot(server.port)  # still taken (a keyed or --allow-unsigned replica may resume it)
    assert snapshot.mac == b""
    ended, error = await _refused(server.port, snapshot)
    assert error.code() == SC.FAILED_PRECONDITION
    assert "--snapshot-key-file" in error.details() and "--allow-unsigned-snapshots" in error.details()
    assert_ended(ended, "bad_request", SC.FAILED_PRECONDITION, "RESUME_DISABLED")
    await _still_serves(server.port)


async def test_allow_unsigned_snapshots_resumes_without_a_key(server_factory) -> None:
    a, b = [await server_factory(allow_unsigned_snapshots=True) for _ in range(2)]
    snapshot, reference = await _snapshot(a.port)
    _same(await _resume(b.port, snapshot), reference)


async def test_a_rotation_accepts_the_previous_key_and_refuses_an_unknown_one(server_factory, tmp_path) -> None:
    old, new = "old-key-" + "a" * 32, "new-key-" + "b" * 32
    before = await server_factory(snapshot_key_file=str(write_snapshot_keys(tmp_path / "old", old)))
    during = await server_factory(snapshot_key_file=str(write_snapshot_keys(tmp_path / "both", new, old)))
    after = await server_factory(snapshot_key_file=str(write_snapshot_keys(tmp_path / "new", new)))
    signed_old, reference = await _snapshot(before.port)
    _same(await _resume(during.port, signed_old), reference)  # the previous key still verifies
    ended, _ = await _refused(after.port, signed_old)  # once it is dropped, it is an unknown key
    assert_ended(ended, "bad_request", SC.PERMISSION_DENIED, "SNAPSHOT_FORGED")
    signed_new, reference = await _snapshot(during.port)  # the first line signs
    _same(await _resume(after.port, signed_new), reference)
    ended, _ = await _refused(before.port, signed_new)
    assert_ended(ended, "bad_request", SC.PERMISSION_DENIED, "SNAPSHOT_FORGED")


# -------------------------------------------------------------------------------- what a state may hold


def _hidden(value: float) -> Any:
    def edit(state: pb.EpisodeState) -> None:
        h = dec(state.hidden_h).copy()
        h[2, 7] = value
        state.hidden_h.CopyFrom(enc(h))

    return edit


def _set(**fields: Any) -> Any:
    def edit(state: pb.EpisodeState) -> None:
        for name, value in fields.items():
            setattr(state, name, value)

    return edit


def _int64_hidden(state: pb.EpisodeState) -> None:
    state.hidden_c.CopyFrom(enc(dec(state.hidden_c).astype(np.int64)))


def _float64_bytes(state: pb.EpisodeState) -> None:
    """The issue's case: the shape is right, the bytes are not (the old message said [4, 256] needs [4, 256])."""
    state.hidden_h.data = dec(state.hidden_h).astype(np.float64).tobytes()


_INVALID = {
    "epsilon 7.5": (_set(epsilon=7.5), "BAD_EPSILON", "resume_from.epsilon: expected a number in [0, 1]"),
    "epsilon NaN": (_set(epsilon=math.nan), "BAD_EPSILON", "resume_from.epsilon: expected a number in [0, 1]"),
    "hidden NaN": (_hidden(math.nan), "BAD_TENSOR", "resume_from.hidden_h: expected finite values"),
    "hidden Inf": (_hidden(math.inf), "BAD_TENSOR", "resume_from.hidden_h: expected finite values"),
    "hidden int64": (_int64_hidden, "BAD_SNAPSHOT", "resume_from.hidden_c: expected DATA_TYPE_FLOAT32"),
    "hidden bytes": (
        _float64_bytes,
        "BAD_TENSOR",
        f"resume_from.hidden_h: shape [{ENVS}, {HIDDEN}] of "
        f"DATA_TYPE_FLOAT32 needs {ENVS * HIDDEN * 4} bytes, got {ENVS * HIDDEN * 8}",
    ),
    "step_index 2**63-1": (_set(step_index=2**63 - 1), "BAD_SNAPSHOT", "resume_from.step_index: expected"),
    "step_index -1": (_set(step_index=-1), "BAD_SNAPSHOT", "resume_from.step_index: expected"),
    "num_envs over --max-envs": (_set(num_envs=ENVS + 1), "ENV_LIMIT", "resume_from.num_envs: expected 1..4"),
    "num_envs 0": (_set(num_envs=0), "ENV_LIMIT", "resume_from.num_envs: expected 1..4"),
    "rng_state": (_set(rng_state=b"\x00" * 5056), "BAD_SNAPSHOT", "resume_from.rng_state: 5056 bytes"),
}


@pytest.mark.parametrize("case", list(_INVALID))
async def test_each_invalid_resumed_field_is_invalid_argument_and_the_server_keeps_serving(
    server_factory, key_file: Path, case: str
) -> None:
    edit, reason, message = _INVALID[case]
    server = await server_factory(snapshot_key_file=str(key_file), max_envs=ENVS)
    snapshot, reference = await _snapshot(server.port)
    state = pb.EpisodeState.FromString(snapshot.state)
    edit(state)
    ended, error = await _refused(server.port, seal(state, key_file))  # signed: as if the key had leaked
    assert error.code() == SC.INVALID_ARGUMENT and message in error.details(), error.details()
    assert_ended(ended, "bad_request", SC.INVALID_ARGUMENT, reason)
    await _still_serves(server.port)
    _same(await _resume(server.port, snapshot), reference)  # and the untouched snapshot still resumes


async def test_an_episode_at_the_step_limit_takes_its_last_step_then_is_out_of_range(server_factory, key_file) -> None:
    """The rule of a resumed step index is the rule of every step: the counter can never pass 2**53."""
    server = await server_factory(snapshot_key_file=str(key_file))
    snapshot, _ = await _snapshot(server.port)
    state = pb.EpisodeState.FromString(snapshot.state)
    state.step_index = MAX_STEP_INDEX - 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = _Stream(channel, token=False)
        started = await stream.start(pb.EpisodeStart(resume_from=seal(state, key_file)))
        assert started.started.step_index == MAX_STEP_INDEX - 1
        assert (await stream.step(0)).step.step_index == MAX_STEP_INDEX - 1
        await stream.call.write(step_msg(_obs(1)))
        responses, error = await read_to_end(stream.call)
    assert error.code() == SC.OUT_OF_RANGE and "at most 2**53 steps" in error.details()
    assert_ended(responses[-1], "bad_request", SC.OUT_OF_RANGE, "STEP_LIMIT")
    await _still_serves(server.port)


async def test_a_snapshot_of_another_hidden_size_says_what_it_has_and_what_is_needed(server_factory, key_file) -> None:
    server = await server_factory(snapshot_key_file=str(key_file))
    snapshot, _ = await _snapshot(server.port)
    state = pb.EpisodeState.FromString(snapshot.state)
    for part in (state.hidden_h, state.hidden_c):
        part.CopyFrom(enc(np.zeros((ENVS, 128), np.float32)))
    ended, error = await _refused(server.port, seal(state, key_file))
    assert error.code() == SC.FAILED_PRECONDITION
    assert f"the snapshot's state is [{ENVS}, 128]" in error.details()
    assert f"needs [{ENVS}, {HIDDEN}]" in error.details()
    assert_ended(ended, "bad_request", SC.FAILED_PRECONDITION, "SNAPSHOT_MISMATCH")
