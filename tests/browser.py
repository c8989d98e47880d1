"""A headless Chromium for tests, driven by Selenium through Debian's chromedriver.

Nothing is downloaded: the browser is ``/usr/bin/chromium`` and the driver
``/usr/bin/chromedriver`` (Debian's ``chromium`` and ``chromium-driver``, listed in
``tests/system-packages.txt``). ``open_browser()`` ends the driver and every browser
process it started by pid, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import psutil
import pytest

from ember._private.processes import stop_pid

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--window-size=1400,1000")


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        pytest.skip(f"needs Debian's chromium and chromium-driver (tests/setup.sh installs them): missing {missing}")
    pytest.importorskip("selenium")


@contextlib.contextmanager
def open_browser(width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A Selenium Chrome driver on a fresh profile; all its processes end with the block."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ember-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    service = Service(executable_path=CHROMEDRIVER, port=0)
    driver = None
    try:
        driver = webdriver.Chrome(service=service, options=options)
        yield driver
    finally:
        pids = _descendants(service.process.pid) if service.process is not None else []
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        if service.process is not None:
            stop_pid(service.process.pid, proc=service.process)
        for pid in pids:  # a browser process that outlived quit()
            stop_pid(pid)
        shutil.rmtree(profile, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []
