"""``hamlet-viewer --watch`` in a real headless browser: a real server with ``enable_watch``, a remote
simulator playing the demo L1 model through the client SDK in a thread, the real viewer process and Debian's
Chromium (Selenium). The page follows the session: the step index advances, the agent decoded from the
observations moves, the Q chart changes; there are no play controls; no console error. Saves
``viewer-watch.png`` to ``$HAMLET_VIEWER_ARTIFACTS`` (default: a temporary folder, printed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_server import ThreadedServer

from hamlet_client import HamletClient
from hamlet_server.config import ServerConfig
from hamlet_viewer.world import trained_layout
from townlet.env import VectorTownletEnv, get_level

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 20.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver: `make browser-deps` (run by `make test`)",
    ),
]


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
    command = [sys.executable, "-m", "hamlet_viewer.cli", "--watch", "--target", server.target, "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            proc.kill()
            pytest.fail(f"hamlet-viewer --watch did not start: {line}{proc.communicate(timeout=10)[1]}")
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,760"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("HAMLET_VIEWER_ARTIFACTS") or tmp_path_factory.mktemp("viewer-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_watch_page_follows_a_remote_simulators_session(
    simulator: threading.Event, viewer: str, browser: Any, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def text(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).text)

    def step_index() -> int:
        return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-step-index") or -1)

    def wait(condition: Callable[[], Any], what: str) -> Any:
        return WebDriverWait(browser, WAIT, poll_frequency=0.05).until(lambda _: condition(), message=what)

    def agent() -> str:
        return str(browser.find_element(By.ID, "card-0").get_attribute("data-agent") or "")

    browser.get(viewer)
    wait(lambda: text("model-label") == "townlet-L1-mlp" and step_index() >= 0, "the first frame")
    assert text("level-label") == "L1" and browser.find_elements(By.ID, "play") == []  # read-only
    first_q, first_index = browser.find_element(By.ID, "qchart").get_attribute("data-q"), step_index()
    seen = {agent()}
    wait(lambda: seen.add(agent()) or len(seen - {""}) >= 3, "the agent to visit three cells")
    wait(lambda: browser.find_element(By.ID, "qchart").get_attribute("data-q") != first_q, "the Q chart to change")
    assert step_index() > first_index
    wait(lambda: step_index() >= 60, "step 60")
    shot = artifacts / "viewer-watch.png"
    browser.save_screenshot(str(shot))
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    with capsys.disabled():
        print(f"\nwatch screenshot: {shot}")
