"""A real browser for the dashboard tests: the system's headless Chromium driven through
chromium-driver by Selenium. `chromium_missing()` says why it cannot run here (the tests
skip with that reason); `Browser` reads the page as a person sees it, its console log
included, and every wait on it has a deadline."""

from __future__ import annotations

import base64
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
# Root in a container needs --no-sandbox; the closed network refuses what Chromium does in
# the background (updates, sync, QUIC probes), so those are off.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1800")


def _binary() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM) if path), None)


def chromium_missing() -> str | None:
    """Why no browser test can run here, or None."""
    if importlib.util.find_spec("selenium") is None:
        return "the selenium package is not installed (pip install -e '.[test]')"
    if _binary() is None:
        return "no Chromium found (apt-get install chromium chromium-driver)"
    if shutil.which("chromedriver") is None:
        return "no chromedriver found (apt-get install chromium-driver)"
    return None


class Browser:
    """One headless Chromium with a profile of its own, removed on close()."""

    def __init__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="fastproxy-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = _binary()
        for flag in (*FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def text(self, css: str) -> str:
        """The visible text of the first element matching `css` ("" if there is none),
        read in one step of the page's own script: the page redraws itself, and an element
        found in one WebDriver call may be gone by the next."""
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : '';", css)

    def wait_text(self, css: str, predicate, *, deadline_s: float = 15.0, what: str = "") -> str:
        """Poll the text of `css` until `predicate(text)` holds; that text."""
        deadline = time.monotonic() + deadline_s
        while True:
            text = self.text(css)
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{what or css}: the page shows {text!r} after {deadline_s} s")
            time.sleep(0.1)

    def console_errors(self) -> list[str]:
        """Console entries at level SEVERE since the last call (script errors, failed loads)."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def screenshot(self, path) -> None:
        """A PNG of the whole page, below the window's edge included."""
        width, height = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, document.body.scrollHeight];")
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        Path(path).write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
