"""Debian's Chromium driven by Selenium with Debian's chromedriver, for the tests that need a real browser.

Outside CI a test module that needs it skips with the reason when something is missing (`require`); in CI
(CI=true) it fails instead. `.ci/run` installs both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# Screenshots and other things a test keeps for people to look at (not committed).
ARTIFACTS = Path(os.environ.get("DESTINATIONS_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))


def missing() -> str | None:
    if not CHROMIUM or not CHROMEDRIVER:
        return "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    return None


def require(reason: str | None) -> None:
    """Skip the calling module with `reason` outside CI, fail in CI."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"the browser test cannot run in CI: {reason}")
    pytest.skip(reason, allow_module_level=True)


@contextmanager
def driver(profile: Path) -> Iterator[Any]:
    """A headless Chromium that keeps the page's console messages (`get_log("browser")`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,900", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER or ""), options=options)
    chrome.set_script_timeout(60)
    try:
        yield chrome
    finally:
        chrome.quit()
