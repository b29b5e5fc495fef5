"""The live viewer in a real headless browser: a real server (the trained demo models), the real
`hamlet-viewer` process, and Debian's Chromium driven by Selenium.

Play moves the agent and updates the step counter and the Q chart; pause stops the frames; step advances
by exactly one; the model switch shows the other model; the page logs no console error; no file appears
in the viewer's working directory. Screenshots go to ``$HAMLET_VIEWER_ARTIFACTS`` (default: a temporary
folder, printed). `make test` installs Chromium first (`make browser-deps`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import Page, chromium, needs_chromium, save_screenshot, viewer_process
from demo_models import DEMO_L2, version_of
from live_server import ThreadedServer

from hamlet_server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, needs_chromium]


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
    args = ["--target", server.target, "--model", "townlet-L1-mlp", "--speed", "25"]
    with viewer_process(*args, cwd=workdir) as url:
        assert url.startswith("http://127.0.0.1:")  # loopback by default
        yield url, workdir


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium(1400, 980) as driver:
        yield driver


def test_play_pause_step_and_switch_model_in_chromium(
    viewer: tuple[str, Path], browser: Any, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    url, workdir = viewer
    page = Page(browser)

    def agent() -> tuple[str, str]:
        return page.attribute("agent-0", "data-x"), page.attribute("agent-0", "data-y")

    browser.get(url)
    page.wait(
        lambda: page.text("model-label") == "townlet-L1-mlp" and page.counter("statuses") >= 1, "the first session"
    )
    assert (page.text("tick"), page.text("version-label")) == ("0", "300")

    # play: the step counter advances, the agent moves, the Q chart changes
    page.click("play")
    page.wait(lambda: int(page.text("tick")) >= 1, "a first frame")
    first_q = page.attribute("qchart", "data-q")
    seen = {agent()}
    page.wait(lambda: seen.add(agent()) or len(seen) >= 3, "the agent to visit three cells")
    page.wait(lambda: page.attribute("qchart", "data-q") != first_q, "the Q chart to change")
    assert int(page.text("tick")) > 1 and int(page.text("step")) >= 1

    # pause: no frame follows the pause's status; step adds exactly one frame and one tick
    page.click("pause")
    page.wait(lambda: page.body_data("playing") == "false", "pause")
    tick, frames, statuses = int(page.text("tick")), page.counter("frames"), page.counter("statuses")
    page.click("step-once")
    page.wait(lambda: page.counter("statuses") > statuses, "the step's status")  # sent after the step's frame
    assert (int(page.text("tick")), page.counter("frames")) == (tick + 1, frames + 1)

    # switch model: the L2 LSTM on its 5x5 window, stepped to a known step for the screenshot
    page.select("model", "townlet-L2-lstm")
    page.wait(lambda: page.text("model-label") == "townlet-L2-lstm" and page.text("step") == "0", "the L2 session")
    assert page.text("version-label") == str(version_of(DEMO_L2)) and page.attribute("window-0", "width")
    for _ in range(20):
        statuses = page.counter("statuses")
        page.click("step-once")
        page.wait(lambda s=statuses: page.counter("statuses") > s, "a step")
    assert (page.text("step"), page.text("episode")) == ("20", "1")  # episode 0 was the L1 one
    shot = save_screenshot(browser, "viewer-L2-step20.png", tmp_path_factory)

    errors = page.console_errors()
    assert not errors, errors
    assert sorted(p.name for p in workdir.iterdir()) == []  # no log file in the working directory
    with capsys.disabled():
        print(f"\nviewer screenshot at L2 step 20: {shot}")
