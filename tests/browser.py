"""Headless Chromium for the annotation page's browser tests (and benchmarks/annotate_latency.py): one way to
find the browser, start it, wait for the page and drag a box. Skips without chromium/chromedriver/selenium,
except under CI=true, where it fails (CI installs them with `make browser`)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import time
from collections.abc import Iterator

import pytest

READY = "document.getElementById('status').textContent.startsWith('ready')"

# the summed alpha of the overlay canvas: goes up when a candidate mask is drawn
OVERLAY_ALPHA = """
const c = document.getElementById('overlay');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let s = 0; for (let i = 3; i < d.length; i += 4) s += d[i]; return s;
"""


def _chrome() -> str | None:
    """The Chromium (or Chrome) executable on PATH."""
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (None when chromium, chromedriver and selenium are present)."""
    missing = [n for n, p in (("chromium", _chrome()), ("chromedriver", shutil.which("chromedriver"))) if p is None]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium")
    return f"browser test needs {', '.join(missing)} (`make browser` installs them)" if missing else None


def require_browser() -> None:
    """Skip the test without a browser (fail under CI=true)."""
    reason = missing_browser()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def headless_chrome() -> Iterator:
    """A headless Chromium WebDriver (1100x700), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _chrome()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,700"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout: float = 90.0):
    """Poll a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def view_offset(driver, x: float, y: float) -> tuple[int, int]:
    """Image pixel (x, y) of the current view -> offset from the overlay's centre (zoom and voxel aspect)."""
    scale, aspect, vx, vy, w, h = driver.execute_script(
        "const v = MskView.view, o = MskView.overlay; return [v.scale, v.aspect || 1, v.x, v.y, o.width, o.height]")
    return int(x * scale + vx - w / 2), int(y * scale * aspect + vy - h / 2)


def drag_box(driver, box) -> None:
    """Drag on the overlay from image pixel (x0, y0) to (x1, y1), as a person would."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    overlay = driver.find_element(By.ID, "overlay")
    (ax, ay), (bx, by) = view_offset(driver, *box[:2]), view_offset(driver, *box[2:])
    ActionChains(driver).move_to_element_with_offset(overlay, ax, ay).click_and_hold() \
        .move_by_offset((bx - ax) // 2, (by - ay) // 2).move_by_offset(bx - ax - (bx - ax) // 2, by - ay - (by - ay) // 2) \
        .release().perform()
