"""The viewer tells the truth about its state (issue 24), in Debian's headless Chromium against a real server
and the real `hamlet-viewer` process.

- The badge says "live" only while the gRPC server answers: it turns "server down" when the server goes, and
  back to "live" when a server returns on the same port; the red error banner of the failure goes once the
  server is back, and does not stay while the page plays normally again; "reconnecting" when the viewer goes.
- A version the repository refused (NaN weights) is not in the version list.
- At 1400x1000 the controls, the grid, the Q chart and the survival chart are on screen together (1, 4 and
  16 environments), and at the default speed the survival chart shows the running episode within seconds
  and the first finished one soon after.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from browser_helpers import WAIT, Page, chromium, needs_chromium, save_screenshot, viewer_process
from demo_models import DEMO_L1, version_of
from live_server import ThreadedServer

from hamlet_server.config import ServerConfig
from townlet.agent.networks import SimpleQNetwork
from townlet.inference import HamletModel, save_inference_checkpoint
from townlet.inference.filenames import inference_checkpoint_name

pytestmark = [pytest.mark.slow, needs_chromium]

L1 = DEMO_L1.parent.name
ON_SCREEN = ("controls", "grids", "qchart", "survival-plot")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A repository holding only the demo L1 model."""
    root = tmp_path / "models"
    (root / L1).mkdir(parents=True)
    shutil.copy(DEMO_L1, root / L1 / DEMO_L1.name)
    return root


def _serve(models: Path, port: int = 0) -> ThreadedServer:
    return ThreadedServer(ServerConfig(models=models, port=port, metrics_port=0, poll_interval=0))


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium(1400, 1000) as driver:
        yield driver


def _open(page: Page, url: str) -> None:
    page.driver.get(url)
    page.wait(lambda: page.counter("statuses") >= 1 and page.body_data("conn") == "live", "the first session, live")


def test_the_badge_and_the_banner_follow_the_server(
    models: Path, browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = _serve(models)
    port = server.server.port
    page = Page(browser)
    try:
        with viewer_process("--target", server.target, "--speed", "20") as url:
            _open(page, url)
            page.click("play")
            page.wait(lambda: int(page.text("tick")) >= 3, "a few frames")

            server.stop()  # the gRPC server goes: the step fails, the page pauses, says why, and the badge turns
            page.wait(lambda: page.body_data("conn") == "server down", "the badge to say the server is down")
            assert page.text("conn") == "server down" and "failed to connect" in page.attribute("conn", "title")
            page.wait(lambda: page.body_data("banner") == "error", "the failure's red banner")
            assert page.body_data("playing") == "false"
            save_screenshot(browser, "viewer-server-down.png", tmp_path_factory)

            server = _serve(models, port)  # a server returns on the same port: live again, the error is over
            page.wait(lambda: page.body_data("conn") == "live", "the badge to say live again")
            assert (
                page.body_data("banner") != "error"
                and not page.driver.find_element("id", "error-banner").is_displayed()
            )

            tick = int(page.text("tick"))
            page.click("play")  # the old stream is gone: reopened with an amber notice, then frames as usual
            page.wait(lambda: int(page.text("tick")) >= tick + 5, "frames from the new server")
            assert page.body_data("banner") in ("", "notice")  # never a stale red banner while playing
            assert page.body_data("conn") == "live"
            page.click("pause")
        # the viewer itself is gone now (its process ended): the page says it is reconnecting, not live
        page.wait(lambda: page.body_data("conn") == "reconnecting", "the badge to say reconnecting")
    finally:
        server.stop()
    errors = [e for e in page.console_errors() if "/ws" not in e["message"]]  # the socket's own close is expected
    assert not errors, errors


def test_a_refused_version_is_not_offered(models: Path, browser: Any) -> None:
    network = SimpleQNetwork(91, 6)
    with torch.no_grad():
        for param in network.parameters():
            param.fill_(float("nan"))  # a diverged run's checkpoint: the server refuses it
    save_inference_checkpoint(HamletModel(network), models / L1 / inference_checkpoint_name(900))
    server = _serve(models)
    page = Page(browser)
    try:
        with viewer_process("--target", server.target) as url:
            _open(page, url)
            options = [o.get_attribute("value") for o in browser.find_elements("css selector", "#version option")]
            labels = [o.text for o in browser.find_elements("css selector", "#version option")]
    finally:
        server.stop()
    shipped = str(version_of(DEMO_L1))
    assert options == ["latest", shipped] and labels == [f"latest ({shipped})", shipped]
    assert page.text("version-label") == shipped


def _off_screen(page: Page) -> dict[str, Any]:
    """The elements of `ON_SCREEN` that are not wholly inside the window, with their boxes."""
    boxes = page.driver.execute_script(
        "const out = {}; for (const id of arguments[0]) out[id] = document.getElementById(id)"
        ".getBoundingClientRect().toJSON(); return out;",
        list(ON_SCREEN),
    )
    size = page.driver.execute_script("return [window.innerWidth, window.innerHeight]")
    return {
        name: (box, size)
        for name, box in boxes.items()
        if box["top"] < 0 or box["left"] < 0 or box["bottom"] > size[1] or box["right"] > size[0] or not box["height"]
    }


def test_controls_grid_q_and_survival_fit_one_screen_and_fill_within_seconds(
    models: Path, browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = _serve(models)
    page = Page(browser)
    try:
        with viewer_process("--target", server.target) as url:  # the default speed
            _open(page, url)
            assert page.text("speed-value") == "30"
            assert not _off_screen(page)
            page.click("play")
            page.wait(lambda: page.attribute("survival-plot", "data-running"), "the running episode on the chart")
            # an episode of the demo L1 model is ~250 steps: ~8 s at 30 steps/s, longer on a loaded machine
            deadline = time.monotonic() + 3 * WAIT
            while int(page.attribute("survival-plot", "data-finished") or 0) < 1:
                assert time.monotonic() < deadline, f"no finished episode by tick {page.text('tick')}"
                time.sleep(0.2)
            assert page.text("survival-summary").startswith("last 1 episodes: model")
            assert not _off_screen(page)
            save_screenshot(browser, "viewer-1400x1000.png", tmp_path_factory)
            for envs in ("4", "16"):
                page.select("envs", envs)
                page.wait(lambda n=envs: page.driver.find_elements("id", f"card-{int(n) - 1}"), f"{envs} grids")
                assert not _off_screen(page), envs
            page.click("pause")
    finally:
        server.stop()
