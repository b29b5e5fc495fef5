"""``hamlet-viewer --watch`` in a real headless browser: a real server with ``enable_watch``, a remote
simulator playing the demo L1 model through the client SDK in a thread, the real viewer process and Debian's
Chromium (Selenium). The page follows the session: the step index advances, the agent decoded from the
observations moves, the Q chart changes; there are no play controls; no console error. Saves
``viewer-watch.png`` to ``$HAMLET_VIEWER_ARTIFACTS`` (default: a temporary folder, printed).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser_helpers import Page, chromium, needs_chromium, save_screenshot, viewer_process
from live_server import ThreadedServer

from hamlet_client import HamletClient
from hamlet_server.config import ServerConfig
from hamlet_viewer.world import trained_layout
from townlet.env import VectorTownletEnv, get_level

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, needs_chromium]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    config = ServerConfig(models=ROOT / "models", port=0, metrics_port=0, poll_interval=0, enable_watch=True)
    live = ThreadedServer(config)
    yield live
    live.stop()


@pytest.fixture
def simulator(server: ThreadedServer) -> Iterator[threading.Event]:
    """A remote simulator: the demo L1 model plays 2 envs on its training layout, ~30 steps a second."""
    stop, opened = threading.Event(), threading.Event()

    def play() -> None:
        client = HamletClient(server.target)
        layout = trained_layout({**client.metadata("townlet-L1-mlp").extra}, get_level("L1"))
        env = VectorTownletEnv("L1", 2, seed=0, layout=layout)
        obs, reset = env.reset(), np.ones(2, dtype=bool)
        with client, client.episode("townlet-L1-mlp", num_envs=2) as episode:
            opened.set()
            while not stop.wait(0.03):
                step = episode.step(obs, reset=reset, action_mask=env.action_masks())
                obs, _, done, info = env.step(step.actions)
                reset = done | info["truncated"]
                if reset.any():
                    obs = env.reset_envs(reset)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    assert opened.wait(30), "the simulator's episode did not open"
    yield stop
    stop.set()
    thread.join(timeout=10)


@pytest.fixture
def viewer(server: ThreadedServer) -> Iterator[str]:
    with viewer_process("--watch", "--target", server.target) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium(1400, 760) as driver:
        yield driver


def test_the_watch_page_follows_a_remote_simulators_session(
    simulator: threading.Event,
    viewer: str,
    browser: Any,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    page = Page(browser)

    def step_index() -> int:
        return page.counter("step-index", missing=-1)

    def agent() -> str:
        return page.attribute("card-0", "data-agent")

    browser.get(viewer)
    page.wait(lambda: page.text("model-label") == "townlet-L1-mlp" and step_index() >= 0, "the first frame")
    assert page.text("level-label") == "L1" and browser.find_elements("id", "play") == []  # read-only
    first_q, first_index = page.attribute("qchart", "data-q"), step_index()
    seen = {agent()}
    page.wait(lambda: seen.add(agent()) or len(seen - {""}) >= 3, "the agent to visit three cells")
    page.wait(lambda: page.attribute("qchart", "data-q") != first_q, "the Q chart to change")
    assert step_index() > first_index
    page.wait(lambda: step_index() >= 60, "step 60")
    shot = save_screenshot(browser, "viewer-watch.png", tmp_path_factory)
    errors = page.console_errors()
    assert not errors, errors
    with capsys.disabled():
        print(f"\nwatch screenshot: {shot}")
