"""The client SDK against the REAL hamlet_server on a free loopback port.

The blocking `HamletClient` needs the (asyncio) server on another event loop, so `live_server` runs it in
a thread of its own; the `AsyncHamletClient` tests use the integration conftest's `server` fixture on the
test's loop. The reference is the same checkpoint loaded locally as a `HamletModel`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest
import torch
from live_server import ThreadedServer

from hamlet_client import (
    AsyncHamletClient,
    CapacityExceededError,
    HamletClient,
    InvalidArgumentError,
    ModelNotFoundError,
)
from hamlet_server.server import HamletServer
from townlet.inference import HamletModel

MLP, LSTM = "mlp", "lstm"  # the models of the conftest's `model_dir`
OBS_DIM = {MLP: 91, LSTM: 54}


@pytest.fixture
def live_server(threaded_server_factory: Callable[..., ThreadedServer]) -> ThreadedServer:
    return threaded_server_factory()


@pytest.fixture
def client(live_server: ThreadedServer) -> Iterator[HamletClient]:
    with HamletClient(live_server.target, timeout=30.0) as c:
        yield c


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _local_rollout(
    model: HamletModel, observations: list[np.ndarray], resets: list[list[bool]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Greedy (actions, Q-values) per step of a recurrent model, zeroing the state of reset environments."""
    hidden = None
    out = []
    for obs, reset in zip(observations, resets, strict=True):
        if hidden is not None and any(reset):
            keep = torch.tensor([not r for r in reset], dtype=torch.float32).view(1, -1, 1)
            hidden = (hidden[0] * keep, hidden[1] * keep)
        result = model.predict(torch.from_numpy(obs), hidden=hidden)
        hidden = result.hidden
        out.append((result.actions.numpy(), result.q_values.numpy()))
    return out


# ---------------------------------------------------------------- unary calls


@pytest.mark.parametrize("kind", [MLP, LSTM])
def test_predict_equals_local_model(client: HamletClient, local_models: dict[str, HamletModel], kind: str) -> None:
    rng = np.random.default_rng(1)
    obs = rng.random((5, OBS_DIM[kind]), dtype=np.float32)
    result = client.predict(obs, model=kind)
    expected = local_models[kind].predict(torch.from_numpy(obs))
    np.testing.assert_array_equal(result.q_values, expected.q_values.numpy())
    np.testing.assert_array_equal(result.actions, expected.actions.numpy())
    assert result.model_version == (kind, 0)
    if kind == LSTM:
        assert result.hidden is not None and expected.hidden is not None
        np.testing.assert_array_equal(result.hidden[0], expected.hidden[0].numpy())
        # Feed the state back: the second call equals the local model's second step.
        again = client.predict(obs, model=kind, hidden=result.hidden)
        expected_again = local_models[kind].predict(torch.from_numpy(obs), hidden=expected.hidden)
        np.testing.assert_array_equal(again.q_values, expected_again.q_values.numpy())
    else:
        assert result.hidden is None


def test_one_observation_as_a_list(client: HamletClient, local_models: dict[str, HamletModel]) -> None:
    obs = [0.25] * OBS_DIM[MLP]
    result = client.predict(obs, model=MLP)
    assert result.q_values.shape == (1, 6)
    expected = local_models[MLP].predict(torch.tensor(obs))
    np.testing.assert_array_equal(result.q_values, expected.q_values.numpy())


def test_seeded_exploration_is_reproducible_and_masks_hold(client: HamletClient) -> None:
    obs = np.random.default_rng(2).random((64, OBS_DIM[MLP]), dtype=np.float32)
    a = client.predict(obs, model=MLP, epsilon=1.0, seed=11).actions
    b = client.predict(obs, model=MLP, epsilon=1.0, seed=11).actions
    np.testing.assert_array_equal(a, b)
    mask = np.zeros((64, 6), dtype=bool)
    mask[:, [1, 4]] = True
    masked = client.predict(obs, model=MLP, epsilon=1.0, seed=3, action_mask=mask).actions
    assert set(masked.tolist()) <= {1, 4}


def test_list_models_and_metadata(client: HamletClient, local_models: dict[str, HamletModel]) -> None:
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {MLP, LSTM}
    assert (models[MLP].network_type, models[MLP].obs_dim, models[MLP].action_dim) == ("simple", 91, 6)
    assert (models[LSTM].network_type, models[LSTM].latest_version) == ("recurrent", 0)
    assert sum(m.is_default for m in models.values()) == 1
    meta = client.metadata(LSTM)
    assert (meta.name, meta.version, meta.hidden_dim, meta.recurrent) == (LSTM, 0, 256, True)
    assert meta.num_parameters == local_models[LSTM].num_parameters
    assert meta.format_version == "inference_v1"
    assert len(meta.sha256) == 64
    assert client.metadata(MLP, version=0).hidden_dim == 0


def test_bad_input_and_unknown_model_are_typed(client: HamletClient) -> None:
    with pytest.raises(InvalidArgumentError, match=r"expected shape \[91\] or \[B, 91\]") as info:
        client.predict(np.zeros((2, 10), dtype=np.float32), model=MLP)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    nan_obs = np.zeros((2, 91), dtype=np.float32)
    nan_obs[1, 3] = np.nan
    with pytest.raises(InvalidArgumentError, match="finite"):  # left to the server for Predict
        client.predict(nan_obs, model=MLP)
    with pytest.raises(ModelNotFoundError) as not_found:
        client.predict(np.zeros((1, 91), dtype=np.float32), model="no-such-model")
    assert not_found.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ModelNotFoundError):
        client.metadata(MLP, version=12345)
    with pytest.raises(InvalidArgumentError, match="hidden"):
        client.predict(np.zeros((1, 91), dtype=np.float32), model=MLP, hidden=np.zeros((2, 1, 1, 256)))
    # The server is unharmed.
    assert client.predict(np.zeros((1, 91), dtype=np.float32), model=MLP).actions.shape == (1,)


# ---------------------------------------------------------------- episodes


def test_episode_equals_local_rollout_and_frees_its_session(
    live_server: ThreadedServer, client: HamletClient, local_models: dict[str, HamletModel]
) -> None:
    rng = np.random.default_rng(3)
    num_envs, steps = 3, 8
    observations = [rng.random((num_envs, OBS_DIM[LSTM]), dtype=np.float32) for _ in range(steps)]
    resets = [[t == 4, False, t == 6] for t in range(steps)]
    expected = _local_rollout(local_models[LSTM], observations, resets)
    with client.episode(LSTM, num_envs=num_envs) as episode:
        assert (episode.model, episode.version, episode.num_envs) == (LSTM, 0, num_envs)
        assert (episode.obs_dim, episode.action_dim, episode.recurrent) == (54, 6, True)
        assert live_server.sessions() == 1
        for t, (obs, reset) in enumerate(zip(observations, resets, strict=True)):
            step = episode.step(obs, reset=reset)
            assert step.step_index == t
            np.testing.assert_array_equal(step.q_values, expected[t][1])
            np.testing.assert_array_equal(step.actions, expected[t][0])
    _wait_for(lambda: live_server.sessions() == 0)


def test_episode_cancelled_by_an_exception_frees_its_session(live_server: ThreadedServer, client: HamletClient) -> None:
    with pytest.raises(KeyboardInterrupt), client.episode(MLP, num_envs=2) as episode:
        episode.step(np.zeros((2, 91), dtype=np.float32))
        raise KeyboardInterrupt
    _wait_for(lambda: live_server.sessions() == 0)


def test_episode_errors_are_typed(threaded_server_factory: Callable[..., ThreadedServer]) -> None:
    server = threaded_server_factory(max_sessions=1)
    with HamletClient(server.target) as client:
        with pytest.raises(ModelNotFoundError):
            client.episode("no-such-model")
        with client.episode(MLP) as first:
            with pytest.raises(CapacityExceededError):
                client.episode(MLP)
            first.step(np.zeros(91, dtype=np.float32))
            with pytest.raises(InvalidArgumentError, match=r"expected shape \[91\] or \[B, 91\]"):
                first.step(np.zeros(20, dtype=np.float32))
            assert first.closed
        _wait_for(lambda: server.sessions() == 0)
        with client.episode(MLP) as second:  # capacity is back
            assert second.step(np.zeros(91, dtype=np.float32)).step_index == 0


def test_threads_share_one_client(live_server: ThreadedServer, local_models: dict[str, HamletModel]) -> None:
    rng = np.random.default_rng(4)
    inputs = [rng.random((2, OBS_DIM[MLP]), dtype=np.float32) for _ in range(24)]
    with HamletClient(live_server.target, timeout=30.0) as client, futures.ThreadPoolExecutor(4) as pool:

        def call(obs: np.ndarray) -> np.ndarray:
            return client.predict(obs, model=MLP).q_values

        def episode(seed: int) -> list[np.ndarray]:
            with client.episode(MLP, num_envs=2) as ep:
                return [ep.step(obs).q_values for obs in inputs[seed : seed + 4]]

        q_values = list(pool.map(call, inputs))
        streamed = list(pool.map(episode, range(4)))
    # Concurrent calls are batched together on the server: equal up to float summation order.
    for obs, q in zip(inputs, q_values, strict=True):
        np.testing.assert_allclose(q, local_models[MLP].predict(torch.from_numpy(obs)).q_values.numpy(), atol=1e-5)
    for seed, qs in enumerate(streamed):
        for obs, q in zip(inputs[seed : seed + 4], qs, strict=True):
            expected = local_models[MLP].predict(torch.from_numpy(obs)).q_values.numpy()
            np.testing.assert_allclose(q, expected, atol=1e-5)
    _wait_for(lambda: live_server.sessions() == 0)


# ---------------------------------------------------------------- asyncio client


async def test_async_client_predict_and_concurrent_episodes(
    server: HamletServer, local_models: dict[str, HamletModel]
) -> None:
    rng = np.random.default_rng(5)
    async with AsyncHamletClient(f"127.0.0.1:{server.port}", timeout=30.0) as client:
        obs = rng.random((4, OBS_DIM[LSTM]), dtype=np.float32)
        result = await client.predict(obs, model=LSTM)
        np.testing.assert_array_equal(result.q_values, local_models[LSTM].predict(torch.from_numpy(obs)).q_values)
        assert {m.name for m in await client.list_models()} == {MLP, LSTM}
        assert (await client.metadata(MLP)).obs_dim == 91
        with pytest.raises(ModelNotFoundError):
            await client.predict(obs, model="no-such-model")

        observations = [rng.random((2, OBS_DIM[LSTM]), dtype=np.float32) for _ in range(5)]
        resets = [[False, t == 2] for t in range(5)]
        expected = _local_rollout(local_models[LSTM], observations, resets)

        async def simulate() -> None:
            async with client.episode(LSTM, num_envs=2) as episode:
                for t, (o, r) in enumerate(zip(observations, resets, strict=True)):
                    step = await episode.step(o, reset=r)
                    # Concurrent streams share forwards: equal up to float summation order.
                    np.testing.assert_allclose(step.q_values, expected[t][1], atol=1e-5)

        await asyncio.gather(*(simulate() for _ in range(6)))
        for _ in range(100):
            if len(server.streams) == 0:
                break
            await asyncio.sleep(0.02)
        assert len(server.streams) == 0
