"""What the viewer's browser tests share: Debian's Chromium driven by Selenium, a `hamlet-viewer` process, a
page read by element id, and where screenshots go.

Selenium is imported when a browser starts, so that collecting the tests needs neither it nor Chromium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

__all__ = ["WAIT", "Page", "chromium", "needs_chromium", "save_screenshot", "viewer_process"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 20.0  # seconds any one condition may take on a loaded 2-core machine

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver: `make browser-deps` (run by `make test`)",
)


@contextmanager
def viewer_process(*args: str, cwd: Path | None = None) -> Iterator[str]:
    """``hamlet-viewer ARGS`` on a free loopback port, as a process in ``cwd``; yields its URL once it is ready."""
    command = [sys.executable, "-m", "hamlet_viewer.cli", *args, "--port", "0", "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            proc.kill()
            pytest.fail(f"hamlet-viewer {' '.join(args)} did not start: {line}{proc.communicate(timeout=10)[1]}")
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def chromium(width: int, height: int) -> Iterator[Any]:
    """A headless Chromium (a Selenium driver) with a ``width`` x ``height`` window that keeps the console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver: Any, name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Saves what ``driver`` shows as ``name`` in ``$HAMLET_VIEWER_ARTIFACTS``, else in a new temporary folder."""
    folder = Path(os.environ.get("HAMLET_VIEWER_ARTIFACTS") or tmp_path_factory.mktemp("viewer-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / name))
    return folder / name


class Page:
    """The page open in a Selenium ``driver``, read by element id ("id", "tag name": WebDriver's locator names,
    the values of Selenium's ``By.ID`` and ``By.TAG_NAME``)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element("id", element_id).text)

    def attribute(self, element_id: str, name: str) -> str:
        """Attribute ``name`` of element ``element_id`` ("" where it has none)."""
        return str(self.driver.find_element("id", element_id).get_attribute(name) or "")

    def body_data(self, name: str) -> str:
        """The page's ``<body data-NAME>`` ("" until it is set): what the page says it received."""
        return str(self.driver.find_element("tag name", "body").get_attribute(f"data-{name}") or "")

    def counter(self, name: str, missing: int = 0) -> int:
        """``<body data-NAME>`` as a number (message counters, the step index), ``missing`` until it is set."""
        return int(self.body_data(name) or missing)

    def click(self, element_id: str) -> None:
        self.driver.find_element("id", element_id).click()

    def select(self, element_id: str, value: str) -> None:
        """Chooses the option of value ``value`` in the <select> ``element_id``."""
        from selenium.webdriver.support.ui import Select

        Select(self.driver.find_element("id", element_id)).select_by_value(value)

    def wait(self, condition: Callable[[], Any], what: str) -> Any:
        """Polls ``condition`` until it is truthy and returns it; fails saying ``what`` did not happen in time."""
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT, poll_frequency=0.05).until(lambda _: condition(), message=what)

    def console_errors(self) -> list[dict[str, Any]]:
        """The SEVERE entries of the browser console so far."""
        return [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]
