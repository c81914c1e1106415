"""A headless Debian chromium driven by selenium through chromium-driver, for the console's tests.

Selenium Manager is never asked for a browser or a driver (it would download them): the
binary and the driver are the Debian packages' paths. ``scripts/_env.sh`` installs them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("EDGEFLEET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EDGEFLEET_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1400,1000")
# Where the screenshots go: docs/console/ when EDGEFLEET_CONSOLE_SCREENSHOTS names it (the
# run that refreshes the README's pictures), else the test's own temporary directory.
SHOTS_ENV = "EDGEFLEET_CONSOLE_SCREENSHOTS"


def chromium(download_dir: Path) -> webdriver.Chrome:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            pytest.fail(f"{path} is missing: the console's browser tests need Debian's chromium; run: {INSTALL} "
                        "(scripts/test does when it can)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={download_dir}")
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


class Page:
    """The driver plus the waits a person's eyes do: poll what is shown, with a deadline."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, shots: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.shots = shots

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    @property
    def path(self) -> str:
        url: str = self.driver.current_url
        return url[len(self.base_url):] if url.startswith(self.base_url) else url

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        try:
            return str(self.find(css).text)
        except (WebDriverException, StaleElementReferenceException):
            return ""

    def wait(self, check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
        def attempt(_driver: Any) -> Any:
            try:
                return check()
            except (StaleElementReferenceException, WebDriverException):
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(attempt)
        except Exception as exc:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the page shows:\n"
                                 f"{self.text('main')[:3000]}") from exc

    def wait_text(self, css: str, wanted: str, timeout: float = 60.0) -> str:
        return str(self.wait(lambda: wanted in (shown := self.text(css)) and shown, f"{css!r} to show {wanted!r}",
                             timeout))

    def confirm(self) -> None:
        self.wait(lambda: self.find("#confirm").get_attribute("open") is not None, "the confirmation dialog")
        self.find("#confirm-ok").click()

    def login(self, token: str, path: str = "/console/") -> None:
        self.open(path)
        self.wait(lambda: self.path.startswith("/console/login"), "the login page")
        self.find("#token").send_keys(token)
        self.find("#login").click()
        self.wait(lambda: not self.path.startswith("/console/login"), "the login to go through")

    def logout(self) -> None:
        self.find("#logout").click()
        self.wait(lambda: self.path.startswith("/console/login"), "the login page after logging out")

    def screenshot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path
