"""Episodes that outlive a replica, at the protocol level: a snapshot taken by one server (per step, or on a
drain) resumes on another with Q-values and actions identical to an uninterrupted run (same seed, epsilon
> 0 so the generator state matters too); tampered, foreign and forged snapshots are refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from server_helpers import LSTM, MLP, assert_ended, dec, read_to_end, step_msg, write_model

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc

ENVS, STEPS, CUT = 4, 10, 4


def _observations(kind: str = LSTM) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    width = 54 if kind == LSTM else 91
    return [rng.random((ENVS, width), dtype=np.float32) for _ in range(STEPS)]


def _resets(t: int) -> list[bool]:
    return [t == 6, False, t == 3, False]


Steps = list[tuple[np.ndarray, list[int]]]


async def _run(port: int, first: int, last: int, *, resume: pb.EpisodeSnapshot | None = None, every: int = 0,
               kind: str = LSTM) -> tuple[Steps, list[pb.StreamEpisodeResponse]]:  # fmt: skip
    """Steps ``first..last-1`` on a new stream (resumed from ``resume`` if given); (q, actions) per step."""
    obs = _observations(kind)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        start = pb.EpisodeStart(model=kind, num_envs=ENVS, epsilon=0.3, seed=5, snapshot_every=every)
        if resume is not None:
            start = pb.EpisodeStart(model=kind, resume_from=resume, snapshot_every=every)
        await call.write(pb.StreamEpisodeRequest(start=start))
        started = await call.read()
        assert started.started.step_index == first and started.started.resumed == (resume is not None and first > 0)
        results, responses = [], []
        for t in range(first, last):
            await call.write(step_msg(obs[t], reset=_resets(t)))
            response = await call.read()
            assert response.step.step_index == t
            results.append((dec(response.step.q_values), list(response.step.actions)))
            responses.append(response)
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    return results, responses


@pytest.fixture
async def replicas(server_factory):
    return [await server_factory() for _ in range(2)]


def _assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for (q, actions), (q_ref, actions_ref) in zip(got, want, strict=True):
        np.testing.assert_array_equal(q, q_ref)  # bit for bit: same state, same float32 forward
        assert actions == actions_ref


@pytest.mark.parametrize("kind", [LSTM, MLP])
async def test_per_step_snapshot_resumes_on_another_replica_exactly(replicas, kind) -> None:
    a, b = replicas
    reference, _ = await _run(a.port, 0, STEPS, kind=kind)
    head, responses = await _run(a.port, 0, CUT, every=1, kind=kind)
    snapshot = responses[-1].step.snapshot
    assert snapshot.state and len(snapshot.checksum) == 32
    tail, _ = await _run(b.port, CUT, STEPS, resume=snapshot, kind=kind)
    _assert_same(head + tail, reference)


async def test_a_drain_hands_the_episode_over_in_band(replicas) -> None:
    a, b = replicas
    reference, _ = await _run(b.port, 0, STEPS)
    obs = _observations()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(pb.StreamEpisodeRequest(start=pb.EpisodeStart(model=LSTM, num_envs=ENVS, epsilon=0.3, seed=5)))
        await call.read()
        head = []
        for t in range(CUT):
            await call.write(step_msg(obs[t], reset=_resets(t)))
            step = (await call.read()).step
            head.append((dec(step.q_values), list(step.actions)))
        await a.drain(grace=1.0)
        responses, _ = await read_to_end(call)
    assert_ended(responses[-1], "server_draining", grpc.StatusCode.UNAVAILABLE)
    snapshot = responses[-1].ended.snapshot
    state = pb.EpisodeState.FromString(snapshot.state)
    assert (state.model, state.step_index, state.num_envs, state.fresh) == (LSTM, CUT, ENVS, False)
    assert len(state.hidden_h.data) == ENVS * 256 * 4 and len(state.rng_state) > 0
    tail, _ = await _run(b.port, CUT, STEPS, resume=snapshot)
    _assert_same(head + tail, reference)


async def _refusal(port: int, start: pb.EpisodeStart) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(pb.StreamEpisodeRequest(start=start))
        _, error = await read_to_end(call)
    assert error is not None
    return error


async def test_tampered_and_foreign_snapshots_are_refused(replicas, tmp_path: Path) -> None:
    a, _ = replicas
    _, responses = await _run(a.port, 0, CUT, every=CUT)
    good = responses[-1].step.snapshot
    state = pb.EpisodeState.FromString(good.state)
    state.step_index = 0  # an edited state with a recomputed checksum would pass the checksum, not a MAC
    edited = pb.EpisodeSnapshot(state=good.state[:-1] + bytes([good.state[-1] ^ 1]), checksum=good.checksum)
    error = await _refusal(a.port, pb.EpisodeStart(resume_from=edited))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "checksum" in error.details()
    state.format_version = 9
    payload = state.SerializeToString()
    foreign = pb.EpisodeSnapshot(state=payload, checksum=hashlib.sha256(payload).digest())
    error = await _refusal(a.port, pb.EpisodeStart(resume_from=foreign))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "format 9" in error.details()
    error = await _refusal(a.port, pb.EpisodeStart(model=MLP, resume_from=good))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "SNAPSHOT_MISMATCH" in str(error.trailing_metadata())


@pytest.mark.parametrize("epsilon", [1.5, float("nan")])
async def test_a_made_up_snapshots_epsilon_is_checked_like_a_starts(replicas, epsilon) -> None:
    """Without a token a client can write a snapshot with a valid checksum: its fields are input like any other."""
    a, _ = replicas
    _, responses = await _run(a.port, 0, CUT, every=CUT)
    state = pb.EpisodeState.FromString(responses[-1].step.snapshot.state)
    state.epsilon = epsilon
    payload = state.SerializeToString()
    made_up = pb.EpisodeSnapshot(state=payload, checksum=hashlib.sha256(payload).digest())
    error = await _refusal(a.port, pb.EpisodeStart(resume_from=made_up))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("resume_from.epsilon: expected a number in [0, 1], got")


async def test_a_server_with_a_token_refuses_unsigned_or_forged_snapshots(server_factory, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    a = await server_factory(token_file=token)
    plain = await server_factory()
    _, responses = await _run(plain.port, 0, CUT, every=CUT)
    unsigned = responses[-1].step.snapshot  # from a server without the token
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode(metadata=(("authorization", "Bearer s3cret-token"),))
        await call.write(pb.StreamEpisodeRequest(start=pb.EpisodeStart(resume_from=unsigned)))
        _, error = await read_to_end(call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "not signed" in error.details()


async def test_a_missing_version_is_failed_precondition_unless_other_versions_are_allowed(
    server_factory, model_dir: Path
) -> None:
    a = await server_factory()
    _, responses = await _run(a.port, 0, CUT, every=CUT)
    snapshot = responses[-1].step.snapshot
    other_root = model_dir.parent / "other"
    write_model(other_root, LSTM, LSTM, 7, seed=1)  # same weights, another version number
    b = await server_factory(models=other_root)
    error = await _refusal(b.port, pb.EpisodeStart(resume_from=snapshot))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "allow_other_version" in error.details()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as channel:
        call = pb_grpc.InferenceServiceStub(channel).StreamEpisode()
        await call.write(pb.StreamEpisodeRequest(start=pb.EpisodeStart(resume_from=snapshot, allow_other_version=True)))
        started = (await call.read()).started
        assert (started.version, started.step_index, started.resumed) == (7, CUT, True)
        await call.write(step_msg(_observations()[CUT]))
        assert (await call.read()).step.step_index == CUT
        await call.done_writing()


def test_the_blocking_client_resumes_a_drained_episode_on_another_replica(model_dir: Path) -> None:
    """HamletClient(resume=True) over two replicas: the replica holding the episode drains mid-run; the loop
    sees no error, the episode continues on the other, and its Q-values equal an uninterrupted run."""
    from live_server import ThreadedServer

    from hamlet_client import HamletClient
    from hamlet_server.config import ServerConfig

    servers = [ThreadedServer(ServerConfig(models=model_dir, port=0, metrics_port=0)) for _ in range(2)]
    obs = _observations()
    try:
        with HamletClient(servers[0].target, timeout=30.0) as plain, plain.episode(LSTM, num_envs=ENVS, epsilon=0.3,
                                                                                   seed=5) as episode:  # fmt: skip
            reference = [episode.step(obs[t], reset=_resets(t)).q_values for t in range(STEPS)]
        client = HamletClient([s.target for s in servers], timeout=30.0)
        with client, client.episode(LSTM, num_envs=ENVS, epsilon=0.3, seed=5, resume=True, snapshot_every=0) as episode:
            got = [episode.step(obs[t], reset=_resets(t)).q_values for t in range(CUT)]
            holder = next(s for s in servers if s.sessions() == 1)
            holder.stop()  # drains: the episode's snapshot comes back in-band
            got += [episode.step(obs[t], reset=_resets(t)).q_values for t in range(CUT, STEPS)]
            assert episode.resumes == 1
        for q, q_ref in zip(got, reference, strict=True):
            np.testing.assert_array_equal(q, q_ref)
    finally:
        for server in servers:
            if server.loop.is_running():
                server.stop()
