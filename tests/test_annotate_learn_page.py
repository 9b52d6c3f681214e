"""The learn panel of the annotation page in headless Chromium (the browser test's page fixture): it shows the
round's phase and the model versions, and its checkbox switches automatic learn rounds on through the API."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("fastapi")
from browser import wait_for  # noqa: E402
from test_annotate_browser import page  # noqa: E402,F401  (the page fixture is shared)


def test_the_learn_panel_shows_the_phase_and_switches_auto_learning(page):  # noqa: F811
    driver, server, _ = page
    driver.get(server.url)
    phase = wait_for(driver, "document.getElementById('learn-phase').textContent")
    assert phase in ("waiting for objects", "ready to learn")
    assert "v0" in wait_for(driver, "document.getElementById('learn-version').textContent")
    assert "objects on" in driver.execute_script("return document.getElementById('learn-progress').textContent")
    learning = server.app.state.learning
    assert learning.settings.auto is False
    driver.execute_script("document.getElementById('learn-auto').click()")
    wait_for(driver, "document.getElementById('learn-auto').checked", 10)
    deadline = time.monotonic() + 10
    while not learning.settings.auto and time.monotonic() < deadline:
        time.sleep(0.05)  # the page's POST /api/learn/auto is on its way
    assert learning.settings.auto is True
    learning.set_auto(False)
