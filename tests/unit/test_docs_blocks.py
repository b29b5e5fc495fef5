"""Every shell and Python block of every page (README.md, docs/, deploy/, models/) runs as written, in order,
like a newcomer typing it, or names the test that mirrors it, or says why it cannot run here.

A page's ``bash`` blocks run one after the other in one scratch folder that looks like a fresh clone after
``make install`` (``models/``, ``examples/``, ``scripts/`` and ``.venv`` linked in), so a block may use what
an earlier block made. A block that talks to ``localhost:50051`` runs against a server this test starts on a
free port, with that address in its place. Blocks that cannot run here (they start a server that runs until
stopped, train for minutes, need Docker or a cluster) are listed in `NOT_RUN` by a phrase of theirs, with
the reason and the test that covers the same calls (``tests/...py::test_name``, checked to exist).

`test_every_block_is_run_or_says_why_not` keeps the list honest: a new block must be runnable or listed, a
listed phrase that matches no block fails, and a fence without a language must not hide a command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_models import DEMO_L2, version_of
from live_server import ThreadedServer

from hamlet_server.config import ServerConfig

REPO = Path(__file__).resolve().parents[2]
PAGE_GLOBS = ("README.md", "docs/*.md", "deploy/*.md", "models/**/README.md", "examples/**/*.md")

NOT_RUN = {
    "make install     #": "runs make test, which runs this test: covered by every CI run of the suite",
    "# terminal 1: serves models/": "starts a server until stopped: "
    "tests/e2e/test_make_serve.py::test_make_serve_serves_the_trained_demo_models runs make serve "
    "(test_readme_shell_blocks_run below runs terminal 2 against a server of its own)",
    "hamlet-train --level L1 --episodes 300 --out runs/L1 --seed 0": "trains for ~5 minutes; the README's migrate "
    "block trains 2 episodes (tests/unit/test_training_recipes.py::test_the_documented_l1_commands_are_the_shipped_"
    "recipe holds this command to the shipped model's recipe, whose first episodes "
    "tests/unit/test_training_recipes.py::test_the_documented_recipe_reproduces_the_recorded_first_episodes reruns)",
    "hamlet-train --level L1 --episodes 300 --out runs/L1            #": "trains for ~5 minutes; "
    "tests/unit/test_training_trainer.py::test_resume_continues_exactly_like_an_uninterrupted_run trains and "
    "resumes the same way in seconds",
    'train(TrainConfig(level="L1", episodes=300': "trains for ~5 minutes; "
    "tests/unit/test_training_trainer.py::test_run_writes_both_checkpoint_kinds_that_reload_exactly calls train()",
    "hamlet-train --level L1 --episodes 300 --out runs/townlet-L1-mlp": "trains for ~5 minutes (how models/ was "
    "made); tests/unit/test_training_recipes.py::test_the_documented_recipe_reproduces_the_recorded_first_episodes "
    "reruns its first episodes against the shipped run's log",
    "hamlet-train --level L2 --relayout --episodes 3000 --out runs/townlet-L2-lstm": "trains for ~2 hours to the "
    "shipped model (how models/ was made); "
    "tests/unit/test_training_recipes.py::test_the_documented_recipe_reproduces_the_recorded_first_episodes "
    "reruns its first episodes against the shipped run's code's log",
    "pip install ./client        #": "builds a fresh venv: "
    "tests/e2e/test_client_clean_venv.py::test_pip_install_client_into_a_clean_venv_works_without_torch",
    "pip install ./client ./sim": "builds a fresh venv: "
    "tests/e2e/test_client_clean_venv.py::test_client_and_numpy_only_simulator_run_remote_rollout_without_torch",
    'with client.episode("my-model"': "a fragment (env, a model named my-model): "
    "tests/integration/test_client_sdk.py::test_episode_equals_local_rollout_and_frees_its_session",
    'HamletClient(["10.0.0.5:50051"': "needs three replicas: "
    "tests/e2e/test_replicas.py::test_episodes_survive_a_replica",
    "--open-inference true   # also serve": "starts a server until stopped: "
    "tests/integration/test_open_inference.py::test_serving_md_tritonclient_block_runs starts one with the flag",
    "client.list_sessions()": "needs a session to watch: "
    "tests/integration/test_watch.py::test_a_watcher_sees_every_step_of_a_stream",
    "from hamlet_client import InvalidArgumentError": "a fragment (client, obs): "
    "tests/integration/test_client_sdk.py::test_bad_input_and_unknown_model_are_typed",
    'HamletClient("serve.example:443"': "names hosts that do not exist: tests/integration/test_security.py::test_tls",
    "dns:///hamlet-serve-headless": "names a Kubernetes Service: "
    "tests/e2e/test_replicas.py::test_unary_predict_spreads_over_the_replicas balances over dns-like targets",
    "make serve                                   #": "starts servers that run until stopped: "
    "tests/e2e/test_make_serve.py::test_make_serve_serves_the_trained_demo_models; the flags and HAMLET_* "
    "variables: tests/unit/test_server_config.py::test_flags_beat_environment_which_beats_defaults",
    "python bench/soak.py --spawn": "soaks a server for 1 and 10 minutes (a benchmark: its figures follow the block)",
    "make view         # terminal 2": "starts the server and the viewer until stopped: "
    "tests/e2e/test_viewer_browser.py::test_play_pause_step_and_switch_model_in_chromium",
    "make view VIEW_ARGS=--watch": "starts the server and the viewer until stopped: "
    "tests/e2e/test_viewer_watch_browser.py::test_the_watch_page_follows_a_remote_simulators_session",
    "docker build -f deploy/Dockerfile": "needs Docker and a Kubernetes cluster: "
    "tests/unit/test_deploy.py::test_every_document_validates_against_the_kubernetes_schemas checks what they load",
    'model = HamletModel.load("model_ep10000.pt")          #': "a fragment (obs, hidden, mask, g): "
    "tests/unit/test_predict.py::test_shapes_and_dtypes",
    "obs, hidden = world.reset(), None": "a fragment of examples/custom_env.py, which the block after it runs",
    "for p in network.vision_encoder.parameters()": "a fragment of examples/transfer_learning.py, which the block "
    "after it runs",
    "ensemble = QEnsemble(": "a fragment of examples/ensemble.py: "
    "tests/unit/test_examples_export.py::test_ensemble_with_given_checkpoints",
    'OnnxModel("agent.onnx", num_threads=1)': "a fragment (obs, hidden, mask): "
    "tests/unit/test_onnx_runtime.py::test_greedy_rollout_equals_hamlet_model",
    'ort.InferenceSession("agent.onnx"': "a fragment of examples/onnx_inference.py, which the block after it runs",
}
SHELL_BLOCKS_RUN_BY = {
    "README.md": "test_readme_shell_blocks_run",
    "docs/INFERENCE_USAGE.md": "test_inference_usage_shell_block_runs",
    "docs/MODEL_EXPORT.md": "test_model_export_shell_blocks_run",
}
PYTHON_BLOCKS_RUN_BY = {  # a page, or a phrase of one block
    "docs/INFERENCE_USAGE.md": "tests/unit/test_docs_inference.py::test_inference_usage_snippets_run",
    "docs/ENVIRONMENT.md": "tests/unit/test_env_docs.py::test_environment_doc_example_runs",
    'with HamletClient("localhost:50051") as client:\n    models =': "test_client_md_blocks_run_against_a_server",
    "import asyncio": "test_client_md_blocks_run_against_a_server",
    "from hamlet_client.proto import": "test_client_md_raw_messages_block_runs",
    "policy = client.local_policy(": "test_client_md_local_inference_block_runs",
    "import tritonclient.grpc": "tests/integration/test_open_inference.py::test_serving_md_tritonclient_block_runs",
    "stub = InferenceStub(channel)": "tests/unit/test_typed_stubs.py::test_client_md_typed_stub_block_runs",
}
SERVER = "localhost:50051"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
_COMMAND = re.compile(r"^(python|pip|make|hamlet-[a-z]+|docker|kubectl|source|cp|cd)\b")
_TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def _pages() -> list[str]:
    found = {p.relative_to(REPO).as_posix() for pattern in PAGE_GLOBS for p in REPO.glob(pattern)}
    return sorted(found)


def _blocks(page: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer((REPO / page).read_text())]


def _how(page: str, lang: str, body: str) -> str | None:
    """Where the block runs, or why not; None when nothing says so (a bash block then runs in its page's test)."""
    for phrase, reason in NOT_RUN.items():
        if phrase in body:
            return f"not run: {reason}"
    if lang == "python":
        by = PYTHON_BLOCKS_RUN_BY.get(page) or next((t for p, t in PYTHON_BLOCKS_RUN_BY.items() if p in body), None)
        return None if by is None else f"run by {by}"
    return None


def _runnable(page: str) -> list[str]:
    return [body for lang, body in _blocks(page) if lang == "bash" and _how(page, lang, body) is None]


def test_every_block_is_run_or_says_why_not() -> None:
    unaccounted, hidden_commands, used = [], [], set()
    for page in _pages():
        for lang, body in _blocks(page):
            first = body.splitlines()[0] if body.strip() else ""
            used.update(phrase for phrase in (*NOT_RUN, *PYTHON_BLOCKS_RUN_BY) if phrase in body or phrase == page)
            if (lang == "" and _COMMAND.match(first)) or lang in {"sh", "shell", "console", "py", "python3"}:
                hidden_commands.append(f"{page}: {first!r}")
            if lang == "python" and _how(page, lang, body) is None:
                unaccounted.append(f"{page}: python block starting {first!r}")
            if lang == "bash" and _how(page, lang, body) is None and page not in SHELL_BLOCKS_RUN_BY:
                unaccounted.append(f"{page}: bash block starting {first!r} (no test runs this page's shell blocks)")
    assert not unaccounted, "run these blocks or list them in NOT_RUN with a reason:\n" + "\n".join(unaccounted)
    assert not hidden_commands, f"label these blocks bash or python (and run them), or text: {hidden_commands}"
    unused = set(NOT_RUN) | set(PYTHON_BLOCKS_RUN_BY)
    assert not unused - used, f"phrases that match no block any more: {sorted(unused - used)}"
    assert all(_runnable(page) for page in SHELL_BLOCKS_RUN_BY), "a page listed as run has no block left to run"


def test_the_tests_named_as_mirrors_exist() -> None:
    runners = [*PYTHON_BLOCKS_RUN_BY.values(), *SHELL_BLOCKS_RUN_BY.values()]
    named = _TEST_REF.findall(" ".join([*NOT_RUN.values(), *runners]))
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^(async )?def {name}\(", (REPO / path).read_text(), flags=re.M)]  # fmt: skip
    missing += [name for name in runners if "::" not in name and name not in globals()]
    assert not missing, f"named tests that do not exist: {missing}"


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A folder that looks like a checkout after ``make install``, without the source tree's other files."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file() or not (venv / "bin" / "hamlet-model").is_file():
        pytest.skip(f"{venv} is not a virtual environment with the project installed")
    for name in ("models", "examples", "scripts"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / ".venv").symlink_to(venv)
    return tmp_path


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    """The demo models of models/ served on a free loopback port: what ``make serve`` would serve."""
    live = ThreadedServer(ServerConfig(models=REPO / "models", port=0, metrics_port=0, device="cpu", backend="torch"))
    yield live
    live.stop()


def _at(body: str, target: str | None) -> str:
    """The block with the test server's address for ``localhost:50051`` (given to the example scripts too)."""
    if target is None:
        return body
    return body.replace(SERVER, target).replace(
        "examples/remote_rollout.py ", f"examples/remote_rollout.py --target {target} "
    )


def _run_page(page: str, cwd: Path, target: str | None = None) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    outputs = []
    for index, body in enumerate(_runnable(page)):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", _at(body, target)],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{page} bash block {index} exited {done.returncode}:\n{body}\n{done.stderr}"
        outputs.append(done.stdout)
    return "\n".join(outputs)


@pytest.mark.slow  # trains two tiny runs, starts a server and a dozen processes
def test_readme_shell_blocks_run(clone: Path, server: ThreadedServer) -> None:
    out = _run_page("README.md", clone, server.target)
    assert re.search(r"^\[\d\] \(1, 6\) \(1, 1, 256\)$", out, flags=re.M), out  # numpy in, numpy out
    assert re.search(rf"^episode\s+{version_of(DEMO_L2)}$", out, flags=re.M)  # hamlet-model inspect of the demo model
    assert "migrated 2 checkpoint(s)" in out
    assert (clone / "my-models" / "quick-L1" / "model_ep00002.pt").is_file()
    assert "['townlet-L1-mlp', 'townlet-L2-lstm']" in out and re.search(r"^\[\d \d \d \d\] \(4, 6\)$", out, re.M)
    assert server.sessions() == 0  # the rollout's streams are closed


@pytest.mark.slow  # trains a tiny run and starts a handful of processes
def test_inference_usage_shell_block_runs(clone: Path) -> None:
    out = _run_page("docs/INFERENCE_USAGE.md", clone)
    assert "dry run: 1 checkpoint(s), nothing written" in out
    assert "migrated 1 checkpoint(s)" in out and "migrated 0 checkpoint(s)" in out and "1 skipped" in out
    assert '"episode": 1,' in out and '"format_version": "inference_v1"' in out


@pytest.mark.slow  # fine-tunes for 200 steps, exports to ONNX twice and starts five processes
def test_model_export_shell_blocks_run(clone: Path) -> None:
    out = _run_page("docs/MODEL_EXPORT.md", clone)
    assert "transfer_learning: OK" in out and (clone / "finetuned.pt").is_file()
    assert "torch imported: False" in out and (clone / "agent.onnx").is_file()


@pytest.mark.slow  # serves the demo models and plays 16 short episodes
def test_client_md_blocks_run_against_a_server(server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = [b for lang, b in _blocks("docs/CLIENT.md") if lang == "python" and "test_client_md_blocks_run" in
              (_how("docs/CLIENT.md", lang, b) or "")]  # fmt: skip
    assert len(blocks) == 2
    for body in blocks:
        exec(compile(_at(body, server.target), "docs/CLIENT.md", "exec"), {"__name__": "docs_block"})
    assert re.search(r"^\[\d \d \d \d\] \(4, 6\) \('townlet-L\d-\w+', \d+\)$", capsys.readouterr().out, flags=re.M)
    assert server.sessions() == 0


def test_client_md_raw_messages_block_runs() -> None:
    (body,) = [b for lang, b in _blocks("docs/CLIENT.md") if lang == "python" and "from hamlet_client.proto" in b]
    namespace: dict[str, object] = {}
    exec(compile(body, "docs/CLIENT.md", "exec"), namespace)  # the documented block, as written
    assert hasattr(namespace["pb"], "PredictRequest") and hasattr(namespace["pb_grpc"], "InferenceServiceStub")


@pytest.mark.slow  # serves the demo models and exports the L2 network to ONNX for the client
def test_client_md_local_inference_block_runs(server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    (body,) = [b for lang, b in _blocks("docs/CLIENT.md") if lang == "python" and "client.local_policy(" in b]
    exec(compile(_at(body, server.target), "docs/CLIENT.md", "exec"), {"__name__": "docs_block"})
    assert re.search(rf"^local {version_of(DEMO_L2)} \[\d \d \d \d\] True$", capsys.readouterr().out, flags=re.M)
    assert server.sessions() == 0
