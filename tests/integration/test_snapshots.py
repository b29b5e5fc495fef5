"""Episodes that outlive a replica, at the protocol level: a snapshot taken by one server (per step, or on a
drain) resumes on another replica of the deployment (the same --snapshot-key-file) with Q-values and actions
identical to an uninterrupted run (same seed, epsilon > 0 so the generator state matters too), as often as
it is sent (a fork); tampered and foreign snapshots are refused. Who may sign and what a resumed state may
hold: test_snapshot_trust.py."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from live_server import write_snapshot_keys
from server_helpers import LSTM, MLP, assert_ended, dec, read_to_end, seal, step_msg, write_model

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
def key_file(tmp_path: Path) -> Path:
    return write_snapshot_keys(tmp_path / "snapshot-keys")


@pytest.fixture
async def replicas(server_factory, key_file: Path):
    return [await server_factory(snapshot_key_file=str(key_file)) for _ in range(2)]


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


async def test_a_snapshot_resumes_more_than_once_so_an_episode_can_be_forked(replicas) -> None:
    """No nonce: the same snapshot continues on both replicas (and twice on one), each fork exactly."""
    a, b = replicas
    reference, _ = await _run(a.port, 0, STEPS)
    _, responses = await _run(a.port, 0, CUT, every=CUT)
    snapshot = responses[-1].step.snapshot
    for port in (b.port, a.port, b.port):
        tail, _ = await _run(port, CUT, STEPS, resume=snapshot)
        _assert_same(tail, reference[CUT:])


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


async def test_onnx_replicas_resume_their_numpy_generator_and_torch_replicas_refuse_it(server_factory, key_file):
    """The onnx backend draws with a numpy generator, the torch one with a torch generator: a snapshot says
    which it carries, resumes exactly on a replica of its backend, and is refused with a clear error on the other."""
    a, b = [await server_factory(snapshot_key_file=str(key_file), backend="onnx") for _ in range(2)]
    torch_replica = await server_factory(snapshot_key_file=str(key_file), backend="torch")
    reference, _ = await _run(a.port, 0, STEPS)
    head, responses = await _run(a.port, 0, CUT, every=1)
    snapshot = responses[-1].step.snapshot
    assert pb.EpisodeState.FromString(snapshot.state).rng_state.startswith(b"numpy-pcg64:")
    tail, _ = await _run(b.port, CUT, STEPS, resume=snapshot)
    _assert_same(head + tail, reference)
    error = await _refusal(torch_replica.port, pb.EpisodeStart(resume_from=snapshot))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "numpy generator state; this server (--backend torch) draws with torch generators" in error.details()
    _, responses = await _run(torch_replica.port, 0, CUT, every=CUT)
    from_torch = responses[-1].step.snapshot
    assert pb.EpisodeState.FromString(from_torch.state).rng_state.startswith(b"torch-cpu:")
    error = await _refusal(a.port, pb.EpisodeStart(resume_from=from_torch))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "torch generator state; this server (--backend onnx) draws with numpy generators" in error.details()


async def test_tampered_and_foreign_snapshots_are_refused(replicas, key_file: Path) -> None:
    a, _ = replicas
    _, responses = await _run(a.port, 0, CUT, every=CUT)
    good = responses[-1].step.snapshot
    state = pb.EpisodeState.FromString(good.state)
    state.step_index = 0  # an edited state with a recomputed checksum would pass the checksum, not a MAC
    edited = pb.EpisodeSnapshot(state=good.state[:-1] + bytes([good.state[-1] ^ 1]), checksum=good.checksum)
    error = await _refusal(a.port, pb.EpisodeStart(resume_from=edited))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "checksum" in error.details()
    state.format_version = 9
    foreign = seal(state, key_file)  # signed: only its format is wrong
    error = await _refusal(a.port, pb.EpisodeStart(resume_from=foreign))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "format 9" in error.details()
    error = await _refusal(a.port, pb.EpisodeStart(model=MLP, resume_from=good))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "SNAPSHOT_MISMATCH" in str(error.trailing_metadata())


async def test_a_missing_version_is_failed_precondition_unless_other_versions_are_allowed(
    server_factory, model_dir: Path, key_file: Path
) -> None:
    a = await server_factory(snapshot_key_file=str(key_file))
    _, responses = await _run(a.port, 0, CUT, every=CUT)
    snapshot = responses[-1].step.snapshot
    other_root = model_dir.parent / "other"
    write_model(other_root, LSTM, LSTM, 7, seed=1)  # same weights, another version number
    b = await server_factory(models=other_root, snapshot_key_file=str(key_file))
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


def test_the_blocking_client_resumes_a_drained_episode_on_another_replica(model_dir: Path, key_file: Path) -> None:
    """HamletClient(resume=True) over two replicas: the replica holding the episode drains mid-run; the loop
    sees no error, the episode continues on the other, and its Q-values equal an uninterrupted run."""
    from live_server import ThreadedServer

    from hamlet_client import HamletClient
    from hamlet_server.config import ServerConfig

    config = ServerConfig(models=model_dir, port=0, metrics_port=0, snapshot_key_file=str(key_file))
    servers = [ThreadedServer(config) for _ in range(2)]
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
