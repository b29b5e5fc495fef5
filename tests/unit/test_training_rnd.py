"""Hamlet's RND novelty bonus: novelty falls with training, the learner alone sees it, the flag off changes nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_trainer import same_state, tiny  # tests/unit is on sys.path (rootdir conftest)

from townlet.inference import HamletModel
from townlet.training.config import TrainConfig
from townlet.training.errors import TrainingConfigError
from townlet.training.evaluate import play_model
from townlet.training.replay import ReplayBuffer, SequenceReplayBuffer
from townlet.training.rnd import TRAIN_BATCH, RNDExploration, decayed_weight
from townlet.training.trainer import EpisodeStats, train

# sha256 of the final weights of `tiny` runs, recorded with the trainer as it was before RND existed.
# The weights of the tiny runs before RND existed, as each CPU kind the suite has run on computes them: float
# training is bit-identical only on one CPU kind (its SIMD kernels round differently from another's). The first
# pair was recorded on the development box of the RND change, the second on an AuthenticAMD "AMD EPYC" box
# running the code of d9032c2 (flag off, the code path of before RND). Any change of the flag-off path gives a
# third digest and fails on every kind.
BEFORE_RND = {
    "simple": (
        "1886b0a3ab00add126a83a6bbea0e5f68e0c78006e5086a985845c718f2ecf4f",
        "d6330938ca7d821e5126efbec858fd87246ecbd56194e0db64d5c79aa0674526",
    ),
    "recurrent": (
        "f569e655c75672a7bdfc5e967643a37f9f722ebc1b11ea4634a7a64d9779ef69",
        "cb77bc8b628a44883a0abf064bef41b420769214189c51c33e7ee0646ee04b23",
    ),
}


def weights_digest(network: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def test_novelty_falls_for_what_the_predictor_sees_and_stays_high_for_the_rest() -> None:
    rnd = RNDExploration(16, seed=0)
    gen = torch.Generator().manual_seed(1)
    seen = torch.rand(32, 16, generator=gen)
    novel = torch.rand(32, 16, generator=gen) + 3.0  # far from anything the predictor trains on
    before_seen, before_novel = rnd.intrinsic_reward(seen), rnd.intrinsic_reward(novel)
    assert before_seen.shape == (32,) and bool((before_seen > 0).all())
    for _ in range(300):
        rnd.observe(seen)
    assert rnd.train_steps == 300 * 32 // TRAIN_BATCH
    after_seen, after_novel = rnd.intrinsic_reward(seen), rnd.intrinsic_reward(novel)
    assert after_seen.mean() < 0.2 * before_seen.mean()
    assert after_novel.mean() > 10 * after_seen.mean()
    assert before_novel.mean() > before_seen.mean()


def test_predictor_steps_once_per_128_observations_on_exactly_those() -> None:
    rnd = RNDExploration(8, seed=0)
    assert rnd.observe(torch.rand(100, 8)) == [] and rnd.train_steps == 0
    assert len(rnd.observe(torch.rand(300, 8))) == 3 and rnd.train_steps == 3  # 400 = 3 * 128 + 16 pending
    assert rnd.state_dict()["pending_observations"].shape == (16, 8)
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        rnd.intrinsic_reward(torch.rand(4, 9))


def test_rnd_state_round_trips_including_pending_observations() -> None:
    first, second = RNDExploration(8, seed=0), RNDExploration(8, seed=5)
    first.observe(torch.rand(200, 8, generator=torch.Generator().manual_seed(2)))
    second.load_state_dict(first.state_dict())
    more = torch.rand(100, 8, generator=torch.Generator().manual_seed(3))
    first.observe(more)
    second.observe(more)
    assert same_state(first.predictor_network.state_dict(), second.predictor_network.state_dict())
    assert torch.equal(first.intrinsic_reward(more), second.intrinsic_reward(more))


def test_construction_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    RNDExploration(8, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_adaptive_weight_decays_only_when_survival_has_settled() -> None:
    assert decayed_weight(1.0, [200] * 99) == 1.0  # window not full yet
    assert decayed_weight(1.0, [200] * 100) == pytest.approx(0.99)
    assert decayed_weight(1.0, [30] * 100) == 1.0  # settled, but on dying early
    assert decayed_weight(1.0, [100, 300] * 50) == 1.0  # variance 10000
    assert decayed_weight(0.0, [200] * 100) == 0.0


def test_replay_adds_the_weighted_bonus_only_when_sampled_with_a_weight() -> None:
    buffer = ReplayBuffer(4, obs_dim=2)
    buffer.push(torch.zeros(4, 2), torch.zeros(4), torch.full((4,), 0.5), torch.zeros(4, 2), torch.zeros(4),
                torch.full((4,), 0.25))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(buffer.sample(3, gen).rewards, torch.full((3,), 0.5))
    assert torch.allclose(buffer.sample(3, gen, intrinsic_weight=2.0).rewards, torch.full((3,), 1.0))
    assert torch.equal(ReplayBuffer.from_state_dict(buffer.state_dict(), 2)._intrinsic, torch.full((4,), 0.25))

    episodes = SequenceReplayBuffer(100)
    episodes.push_episode(torch.zeros(5, 2), torch.zeros(5), torch.ones(5), torch.zeros(5), intrinsic=torch.ones(5))
    plain = episodes.sample(2, 3, torch.Generator().manual_seed(0))
    boosted = episodes.sample(2, 3, torch.Generator().manual_seed(0), intrinsic_weight=0.5)
    assert torch.equal(boosted.rewards[plain.valid], plain.rewards[plain.valid] + 0.5)


def test_flag_off_trains_bit_for_bit_as_before(tmp_path: Path, network_type: str) -> None:
    extra = {"burn_in": 2, "n_step": 3, "double_dqn": True} if network_type == "recurrent" else {}
    result = train(tiny(network_type, tmp_path, **extra))
    assert weights_digest(result.q_network) in BEFORE_RND[network_type]


def test_rnd_run_stores_its_bonus_in_replay_and_never_in_the_env_reward(tmp_path: Path, network_type: str) -> None:
    seen: list[EpisodeStats] = []
    plain = train(tiny(network_type, tmp_path / "plain"), on_episode=seen.append)
    returns_without = [s.mean_return for s in seen]
    seen.clear()
    boosted = train(tiny(network_type, tmp_path / "rnd", rnd_weight=50.0), on_episode=seen.append)
    assert seen[0].mean_return == returns_without[0]  # epsilon 1 in episode 1: same actions, same env reward
    assert seen[0].mean_intrinsic is not None and seen[0].mean_intrinsic > 0 and seen[0].intrinsic_weight == 50.0
    assert not same_state(plain.q_network.state_dict(), boosted.q_network.state_dict())  # the learner saw it
    checkpoint = torch.load(tmp_path / "rnd" / "checkpoint_ep00002.pt", weights_only=True)
    exploration = checkpoint["population_state"]["exploration_state"]
    assert exploration["current_intrinsic_weight"] == 50.0 and exploration["rnd_state"]["obs_dim"] > 0
    replay = checkpoint["population_state"]["replay_buffer"]
    stored = replay["rewards_intrinsic"] if network_type == "simple" else replay["episodes"][0]["rewards_intrinsic"]
    assert float(stored.abs().sum()) > 0
    # the inference checkpoint is the Q-network alone: evaluation plays it on the env's reward, with no RND
    model = HamletModel.load_from_checkpoint(tmp_path / "rnd" / "model_ep00002.pt")
    assert (
        model.metadata["rnd_weight"] == 50.0
        and "rnd_weight" not in HamletModel.load_from_checkpoint(tmp_path / "plain" / "model_ep00002.pt").metadata
    )
    assert same_state(model.network.state_dict(), boosted.q_network.state_dict())
    assert play_model(model, tiny(network_type, tmp_path).level, episodes=2, seed=0).steps.shape == (2,)


def test_rnd_run_resumes_exactly(tmp_path: Path, network_type: str) -> None:
    straight = train(tiny(network_type, tmp_path / "straight", episodes=3, rnd_weight=20.0))
    train(tiny(network_type, tmp_path / "split", episodes=2, rnd_weight=20.0))
    resumed = train(tiny(network_type, tmp_path / "split", episodes=3, rnd_weight=20.0), resume=True)
    assert same_state(straight.q_network.state_dict(), resumed.q_network.state_dict())
    a, b = (
        torch.load(tmp_path / run / "checkpoint_ep00003.pt", weights_only=True)["population_state"]["exploration_state"]
        for run in ("straight", "split")
    )
    assert same_state(a["rnd_state"]["predictor_network"], b["rnd_state"]["predictor_network"])


def test_negative_weight_is_refused() -> None:
    with pytest.raises(TrainingConfigError, match="rnd_weight must be >= 0"):
        TrainConfig(rnd_weight=-1.0)
    assert np.isclose(TrainConfig().rnd_weight, 0.0)
