"""The live viewer in a real headless browser: a real server (the trained demo models), the real
`hamlet-viewer` process, and Debian's Chromium driven by Selenium.

Play moves the agent and updates the step counter and the Q chart; pause stops the frames; step advances
by exactly one; the model switch shows the other model; the page logs no console error; no file appears
in the viewer's working directory. Screenshots go to ``$HAMLET_VIEWER_ARTIFACTS`` (default: a temporary
folder, printed). `make test` installs Chromium first (`make browser-deps`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import ThreadedServer

from hamlet_server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 20.0  # seconds any one condition may take on a loaded 2-core machine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's chromium and chromium-driver: `make browser-deps` (run by `make test`)",
    ),
]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    live = ThreadedServer(ServerConfig(models=ROOT / "models", port=0, metrics_port=0, poll_interval=0))
    yield live
    live.stop()


@pytest.fixture
def viewer(server: ThreadedServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``(url, working directory)`` of a `hamlet-viewer` process against ``server``."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    command = [sys.executable, "-m", "hamlet_viewer.cli", "--target", server.target, "--port", "0"]
    command += ["--model", "townlet-L1-mlp", "--speed", "25", "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            proc.kill()
            pytest.fail(f"hamlet-viewer did not start: {line}{proc.communicate(timeout=10)[1]}")
        url = line.split()[1]
        assert url.startswith("http://127.0.0.1:")  # loopback by default
        yield url, workdir
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,980"):
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


def test_play_pause_step_and_switch_model_in_chromium(
    viewer: tuple[str, Path], browser: Any, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, workdir = viewer

    def text(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).text)

    def body(name: str) -> int:
        return int(browser.find_element(By.TAG_NAME, "body").get_attribute(f"data-{name}") or 0)

    def wait(condition: Callable[[], Any], what: str) -> Any:
        return WebDriverWait(browser, WAIT, poll_frequency=0.05).until(lambda _: condition(), message=what)

    def agent() -> tuple[str, str]:
        node = browser.find_element(By.ID, "agent-0")
        return node.get_attribute("data-x"), node.get_attribute("data-y")

    browser.get(url)
    wait(lambda: text("model-label") == "townlet-L1-mlp" and body("statuses") >= 1, "the first session")
    assert (text("tick"), text("version-label")) == ("0", "300")

    # play: the step counter advances, the agent moves, the Q chart changes
    browser.find_element(By.ID, "play").click()
    wait(lambda: int(text("tick")) >= 1, "a first frame")
    first_q = browser.find_element(By.ID, "qchart").get_attribute("data-q")
    seen = {agent()}
    wait(lambda: seen.add(agent()) or len(seen) >= 3, "the agent to visit three cells")
    wait(lambda: browser.find_element(By.ID, "qchart").get_attribute("data-q") != first_q, "the Q chart to change")
    assert int(text("tick")) > 1 and int(text("step")) >= 1

    # pause: no frame follows the pause's status; step adds exactly one frame and one tick
    browser.find_element(By.ID, "pause").click()
    wait(lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-playing") == "false", "pause")
    tick, frames, statuses = int(text("tick")), body("frames"), body("statuses")
    browser.find_element(By.ID, "step-once").click()
    wait(lambda: body("statuses") > statuses, "the step's status")  # sent after the step's frame
    assert (int(text("tick")), body("frames")) == (tick + 1, frames + 1)

    # switch model: the L2 LSTM on its 5x5 window, stepped to a known step for the screenshot
    Select(browser.find_element(By.ID, "model")).select_by_value("townlet-L2-lstm")
    wait(lambda: text("model-label") == "townlet-L2-lstm" and text("step") == "0", "the L2 session")
    assert text("version-label") == "200" and browser.find_element(By.ID, "window-0").get_attribute("width")
    for _ in range(20):
        statuses = body("statuses")
        browser.find_element(By.ID, "step-once").click()
        wait(lambda s=statuses: body("statuses") > s, "a step")
    assert (text("step"), text("episode")) == ("20", "1")  # episode 0 was the L1 one
    shot = artifacts / "viewer-L2-step20.png"
    browser.save_screenshot(str(shot))

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    assert sorted(p.name for p in workdir.iterdir()) == []  # no log file in the working directory
    with capsys.disabled():
        print(f"\nviewer screenshot at L2 step 20: {shot}")
