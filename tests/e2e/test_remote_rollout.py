"""examples/remote_rollout.py against a real ``hamlet-server`` process serving a freshly trained tiny model.

A one-episode L0_0 training run writes the model; the server serves it from a temp repository on a free
loopback port; the example's rollout must survive exactly as long as the same model played locally.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from ports import free_port

from hamlet_client import HamletClient, HamletError
from townlet.env import Action, VectorTownletEnv
from townlet.inference import HamletModel
from townlet.training.config import TrainConfig
from townlet.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-L0"

pytestmark = pytest.mark.slow


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("remote_rollout", ROOT / "examples" / "remote_rollout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        level="L0_0", episodes=1, out=str(run), seed=2, num_envs=2, buffer_capacity=500, batch_size=8,
        learning_starts=16, train_frequency=4, checkpoint_every=1,
    )  # fmt: skip
    train(config)
    repo = tmp_path_factory.mktemp("models")
    (repo / MODEL).mkdir()
    shutil.copy(run / "model_ep00001.pt", repo / MODEL / "model_ep00001.pt")
    return repo


@pytest.fixture(scope="module")
def target(model_repo: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "hamlet_server.cli", "serve", "--models", str(model_repo), "--port", str(port)]
    command += ["--metrics-port", "0", "--device", "cpu", "--poll-interval", "0", "--log-level", "WARNING"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with HamletClient(address, timeout=1.0) as client:
                    if any(info.name == MODEL for info in client.list_models()):
                        break
            except HamletError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hamlet-server did not come up: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=15)


def local_rollout(model: HamletModel, level: str, layout: dict, episodes: int, seed: int) -> np.ndarray:
    """The example's loop with the model in this process instead of on the server."""
    env = VectorTownletEnv(level, episodes, layout=layout, seed=seed)
    obs = env.reset(seed=seed)
    hidden, finished = None, np.zeros(episodes, dtype=bool)
    while not finished.all():
        masks = env.action_masks()
        masks[finished, Action.WAIT] = True
        result = model.predict(torch.from_numpy(obs), hidden, action_mask=torch.from_numpy(masks))
        hidden = result.hidden
        obs, _, done, info = env.step(result.actions.numpy())
        finished = done | info["truncated"]
    return info["step_counts"].astype(np.int64)


def test_served_rollout_equals_local_rollout(target: str, model_repo: Path) -> None:
    example = load_example()
    model = HamletModel.load(model_repo / MODEL / "model_ep00001.pt")
    layout = example.training_layout("L0_0", 2)
    assert layout == {k: tuple(v) for k, v in model.metadata["affordance_layout"].items()}
    with HamletClient(target, timeout=30.0) as client:
        served = example.rollout(client, MODEL, "L0_0", layout, 4, 5)
    assert served.shape == (4,) and (served > 0).all()
    assert np.array_equal(served, local_rollout(model, "L0_0", layout, 4, 5))


def test_example_script_prints_both_policies(target: str) -> None:
    command = [sys.executable, str(ROOT / "examples" / "remote_rollout.py"), "--target", target]
    for extra, how in (([], "1 stream of 2 envs"), (["--streams"], "2 streams of 1 env")):
        done = subprocess.run(
            [*command, "--model", MODEL, "--envs", "2", "--episodes", "5", "--seed", "1", *extra],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"on L0_0, 5 episodes, trained layout, {how}" in done.stdout
        lines = done.stdout.splitlines()
        assert lines[1].startswith("served") and lines[2].startswith("random") and "env steps/s" in lines[1]
    missing = subprocess.run([*command, "--model", "nope"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "ModelNotFoundError" in missing.stderr


def test_continuous_rollout_restarts_envs_and_counts_episodes(target: str) -> None:
    example = load_example()
    env = VectorTownletEnv("L0_0", 3, layout=example.training_layout("L0_0", 2), seed=4)
    with HamletClient(target, timeout=30.0) as client, client.episode(MODEL, num_envs=3) as stream:
        survival, env_steps = example.run_until(env, 7, 4, example.served_policy(stream))
    assert survival.shape == (7,) and (survival > 0).all()
    assert env_steps % 3 == 0 and env_steps >= survival.sum()  # 3 envs stepped together, restarted as they died
