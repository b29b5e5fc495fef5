"""The container image, built and run (podman, or docker where podman is absent): `make image`'s script builds the
cpu target, which has no torch and ships the demo models as ONNX exports; the container runs as uid 10001 with a
read-only root, answers Predict and a stream through the SDK from a volume of `.onnx` exports, reports healthy
through its HEALTHCHECK on a port other than 50051, hot-reloads an export dropped into its read-only model
volume, and drains on SIGTERM with exit 0.

Skipped (with the reason) only where neither podman nor docker exists; `make test` installs podman first
(`make image-deps`). The build takes minutes the first time; later builds reuse the engine's layer cache.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from demo_models import DEMO_L1, DEMO_L2
from ports import free_port

from hamlet_client import HamletClient

pytestmark = pytest.mark.slow  # builds and runs a container image

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/hamlet-serve:e2e-cpu"
CUDA_TAG = "localhost/hamlet-serve:e2e-cuda"
ENGINE = shutil.which("podman") or (shutil.which("docker") if shutil.which("docker") else None)


def _engine(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert ENGINE is not None
    podman = ENGINE.endswith("podman")
    runtime = ["--runtime", "runc"] if podman else []  # crun fails on cgroups in sandboxes
    if podman and args[0] == "run":  # below the sandbox's hard limits, which runc may not raise
        args = ("run", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", *args[1:])
    done = subprocess.run([ENGINE, *runtime, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{ENGINE} {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def _build(target: str, tag: str) -> str:
    """`make image`'s script, as a user runs it; then the dangling layers of earlier builds are pruned (a rebuilt
    cuda image would otherwise leave several GB behind on every run)."""
    if ENGINE is None:
        pytest.skip("neither podman nor docker is installed (make image-deps installs podman on Debian)")
    started = time.monotonic()
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_image.sh"), target, tag],
        capture_output=True, text=True, timeout=2400, cwd=ROOT,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    print(built.stdout.splitlines()[-1], f"(test saw {time.monotonic() - started:.0f} s)")
    _engine("image", "prune", "--force", check=False, timeout=600)
    return tag


@pytest.fixture(scope="module")
def image() -> str:
    return _build("cpu", TAG)


def _onnx_name(checkpoint: Path, version: int | None = None) -> str:
    return f"model_ep{version:05d}.onnx" if version is not None else checkpoint.with_suffix(".onnx").name


@pytest.fixture
def model_volume(tmp_path: Path) -> Path:
    """The two demo models as verified ONNX exports (what the torch-free image serves), readable by uid 10001."""
    from townlet.inference import HamletModel
    from townlet.inference.onnx_export import export_verified

    root = tmp_path / "models"
    for checkpoint in (DEMO_L1, DEMO_L2):
        export_verified(HamletModel.load(checkpoint), root / checkpoint.parent.name / _onnx_name(checkpoint))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture
def container(image: str, model_volume: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    run = _engine(
        "run", "--detach", "--read-only", "--network", "host",
        "--volume", f"{model_volume}:/models:ro",
        "--env", f"HAMLET_PORT={port}", "--env", "HAMLET_HOST=127.0.0.1", "--env", "HAMLET_METRICS_PORT=0",
        "--env", "HAMLET_POLL_INTERVAL=0.5", "--env", "HAMLET_GRACE=5",
        image,
    )  # fmt: skip
    name = run.stdout.strip()
    try:
        yield name, port
    finally:
        _engine("rm", "--force", name, check=False)


def _wait_healthy(name: str, port: int, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if ENGINE.endswith("podman"):
            if _engine("healthcheck", "run", name, check=False).returncode == 0:
                return
        else:
            state = _engine("inspect", "--format", "{{.State.Health.Status}}", name, check=False).stdout.strip()
            if state == "healthy":
                return
        time.sleep(1)
    logs = _engine("logs", name, check=False)
    raise AssertionError(f"not healthy on port {port} within {deadline_s} s\n{logs.stdout}\n{logs.stderr}")


def test_the_cpu_image_serves_reloads_and_drains(container: tuple[str, int], model_volume: Path) -> None:
    name, port = container
    _wait_healthy(name, port)  # the image's HEALTHCHECK follows HAMLET_PORT
    user = _engine("exec", name, "id", "-u").stdout.strip()
    assert user == "10001"
    assert _engine("exec", name, "touch", "/opt/venv/x", check=False).returncode != 0  # read-only root
    assert _engine("exec", name, "python3", "-c", "import pip", check=False).returncode != 0  # no pip at run time

    with HamletClient(f"127.0.0.1:{port}") as client:
        models = {m.name: m for m in client.list_models()}
        assert set(models) == {DEMO_L1.parent.name, DEMO_L2.parent.name}
        mlp, lstm = models[DEMO_L1.parent.name], models[DEMO_L2.parent.name]
        result = client.predict(np.zeros((2, mlp.obs_dim), np.float32), model=mlp.name)
        assert result.q_values.shape == (2, mlp.action_dim) and np.isfinite(result.q_values).all()
        with client.episode(lstm.name, num_envs=2) as episode:
            for _ in range(3):
                step = episode.step(np.zeros((2, lstm.obs_dim), np.float32))
        assert step.q_values.shape == (2, lstm.action_dim) and step.step_index == 2

        # hot reload: a new version appears in the read-only volume (written from outside the container)
        newer = model_volume / mlp.name / _onnx_name(DEMO_L1, mlp.latest_version + 1)
        shutil.copy2(model_volume / mlp.name / _onnx_name(DEMO_L1), newer)
        newer.chmod(0o644)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if client.predict(np.zeros(mlp.obs_dim, np.float32), model=mlp.name).version == mlp.latest_version + 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the new checkpoint was not served within 60 s")

    _engine("kill", "--signal", "TERM", name)
    code = _engine("wait", name, timeout=60).stdout.strip().splitlines()[-1]
    logs = _engine("logs", name, check=False)
    assert code == "0", logs.stderr[-3000:]
    assert "draining" in logs.stderr and "stopped" in logs.stderr


def test_the_image_is_lean_where_it_matters(image: str) -> None:
    """No pip, setuptools, compiler or torch in the runtime image; the demo models as ONNX exports; a numeric
    non-root user; HOME set."""
    config = _engine("image", "inspect", "--format", "{{.Config.User}} {{range .Config.Env}}{{.}} {{end}}", image)
    user, *env = config.stdout.split()
    assert user == "10001:10001"
    assert "HOME=/home/hamlet" in env
    listing = _engine("run", "--rm", "--entrypoint", "sh", image, "-c",
                      "ls /opt/venv/bin; command -v gcc cc || true", check=True).stdout.split()  # fmt: skip
    assert "hamlet-server" in listing
    assert not {"pip", "pip3", "gcc", "cc"} & {Path(p).name for p in listing}
    probe = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('onnxruntime') is not None)"
    found = _engine("run", "--rm", "--entrypoint", "python3", image, "-c", probe).stdout.split()
    assert found == ["True", "True"]  # no torch; onnxruntime serves
    shipped = _engine("run", "--rm", "--entrypoint", "sh", image, "-c", "ls /models/*/").stdout.split()
    assert {_onnx_name(DEMO_L1), _onnx_name(DEMO_L2)} <= set(shipped) and not [n for n in shipped if n.endswith(".pt")]
    size = _engine("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
    print(f"image {image}: {int(size) / 1e6:.0f} MB")


# ---- the cuda target ----------------------------------------------------------------------------------------------
# Built from PyPI's torch (a CUDA build, its CUDA libraries as wheels) and run here without a GPU: torch's CUDA
# build falls back to the CPU, so the image's packaging, entrypoint, checkpoint serving (.pt with torch), health
# check and drain are all exercised; what only a GPU shows (the CUDA forward) is bench/device_check.sh's job.


@pytest.fixture(scope="module")
def cuda_image() -> str:
    return _build("cuda", CUDA_TAG)


def test_the_cuda_image_is_a_cuda_build_of_torch_with_the_shipped_checkpoints(cuda_image: str) -> None:
    probe = "import torch, importlib.util as u; print(torch.version.cuda or 'none', bool(u.find_spec('onnxruntime')))"
    cuda, has_ort = _engine("run", "--rm", "--entrypoint", "python3", cuda_image, "-c", probe).stdout.split()
    assert cuda != "none", "the cuda target installed a CPU build of torch (a +cpu wheel from a mirror?)"
    assert has_ort == "True"  # export-onnx --verify works in the image too
    config = _engine("image", "inspect", "--format", "{{.Config.User}} {{.Config.Healthcheck.Test}}", cuda_image)
    assert config.stdout.split()[0] == "10001:10001" and "health" in config.stdout
    listing = _engine("run", "--rm", "--entrypoint", "sh", cuda_image, "-c", "ls /opt/venv/bin /models/*/").stdout
    assert "hamlet-server" in listing.split() and not {"pip", "pip3"} & set(listing.split())
    assert {DEMO_L1.name, DEMO_L2.name} <= set(listing.split())
    size = _engine("image", "inspect", "--format", "{{.Size}}", cuda_image).stdout.strip()
    print(f"image {cuda_image}: torch CUDA {cuda}, {int(size) / 1e6:.0f} MB")


def test_the_cuda_image_serves_the_checkpoints_with_torch_and_drains(cuda_image: str) -> None:
    """No GPU here: the server says it runs on the CPU, and its Q-values are the library's for the same checkpoint."""
    from townlet.inference import HamletModel

    port = free_port()
    run = _engine(
        "run", "--detach", "--read-only", "--network", "host",
        "--env", f"HAMLET_PORT={port}", "--env", "HAMLET_HOST=127.0.0.1", "--env", "HAMLET_METRICS_PORT=0",
        "--env", "HAMLET_GRACE=5",
        cuda_image,
    )  # fmt: skip
    name = run.stdout.strip()
    try:
        _wait_healthy(name, port, deadline_s=240)  # torch's CUDA build imports slowly
        assert _engine("exec", name, "id", "-u").stdout.strip() == "10001"
        rng = np.random.default_rng(0)
        with HamletClient(f"127.0.0.1:{port}") as client:
            assert client.server_info().device == "cpu"
            for checkpoint in (DEMO_L1, DEMO_L2):
                model = HamletModel.load(checkpoint)
                obs = rng.standard_normal((3, model.obs_dim)).astype(np.float32)
                expected = model.predict(obs)  # numpy in, numpy out; zero hidden state for the LSTM
                got = client.predict(obs, model=checkpoint.parent.name)
                assert got.version == int(checkpoint.stem.removeprefix("model_ep"))
                np.testing.assert_allclose(got.q_values, expected.q_values, rtol=1e-5, atol=1e-5)
            with client.episode(DEMO_L2.parent.name, num_envs=2) as episode:
                for _ in range(3):
                    step = episode.step(rng.standard_normal((2, model.obs_dim)).astype(np.float32))
            assert step.step_index == 2 and np.isfinite(step.q_values).all()
        _engine("kill", "--signal", "TERM", name)
        code = _engine("wait", name, timeout=60).stdout.strip().splitlines()[-1]
        logs = _engine("logs", name, check=False)
        assert code == "0", logs.stderr[-3000:]
        assert "draining" in logs.stderr and "stopped" in logs.stderr
    finally:
        _engine("rm", "--force", name, check=False)
