"""The annotation page on a CT volume in a real headless Chromium against a real uvicorn: scroll to a slice,
drag a box, commit, propagate, see the per-slice IoU strip with its stop marks, reload and see the object on
another slice. With MEDSAMKIT_SCREENSHOT=1 it also refreshes docs/annotate_volume.png (the README's
screenshot). Skips without chromium/chromedriver, except under CI=true (as test_annotate_browser)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from browser import OVERLAY_ALPHA, READY, drag_box, headless_chrome, require_browser, wait_for  # noqa: E402
from volume_crop import write_gtv_crop  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

@contextlib.contextmanager
def crop_page(litemedsam, folder: Path, half: int):
    """(driver, server, workspace, out, truth): the page of pat_4's CT, the GTV's largest slice +/- ``half``, as a
    single NIfTI file (no label: no objects yet)."""
    require_browser()
    from medsamkit.annotate.http.launch import BackgroundServer
    from medsamkit.annotate.model.segmenter import Segmenter
    from medsamkit.annotate.session.config import AnnotateConfig
    from medsamkit.annotate.session.workspace import Workspace
    from medsamkit.models.loading import weights_identity

    image, _, truth, _ = write_gtv_crop(folder, half)
    out = folder / "annotations"
    ws = Workspace(AnnotateConfig(str(image), out=str(out), window="-1000,400"),
                   Segmenter(litemedsam, out / "embeddings", weights_identity("litemedsam", None)))
    with BackgroundServer(ws, token="volume-token") as server, headless_chrome() as driver:
        yield driver, server, ws, out, truth


@pytest.fixture(scope="module")
def volume_page(litemedsam, tmp_path_factory):
    """(driver, server, out, truth): the page of 7 slices."""
    with crop_page(litemedsam, tmp_path_factory.mktemp("volume-browser"), 3) as (driver, server, _, out, truth):
        yield driver, server, out, truth


def test_scroll_box_commit_propagate_strip_reload(volume_page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver, server, out, truth = volume_page
    driver.get(server.url)
    wait_for(driver, READY)
    assert driver.execute_script("return app.vol.slice") == 3  # the middle slice
    overlay = driver.find_element(By.ID, "overlay")
    ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(overlay), 0, 120).perform()  # wheel: +1
    wait_for(driver, "app.vol.slice === 4")
    wait_for(driver, READY)
    assert "axial 5/7" in driver.find_element(By.ID, "slice-label").text
    ys, xs = np.nonzero(truth[4])
    drag_box(driver, (xs.min(), ys.min(), xs.max(), ys.max()))
    wait_for(driver, "app.answer !== null")
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ENTER)
    wait_for(driver, "document.querySelectorAll('#objects li').length === 1")
    driver.find_element(By.ID, "prop-both").click()
    info = wait_for(driver, "document.getElementById('strip-info').textContent.includes('stopped at')"
                            " && document.getElementById('strip-info').textContent", timeout=240)
    assert "up: stopped at 7 (volume edge)" in info and "down: stopped at 1 (volume edge)" in info
    marks, bars = driver.execute_script("""const c = document.getElementById('strip');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let red = 0, blue = 0; for (let i = 0; i < d.length; i += 4) {
          if (d[i] > 200 && d[i + 1] < 80) red++; if (d[i + 2] > 200 && d[i] < 100) blue++; } return [red, blue];""")
    assert marks > 50 and bars > 50  # stop marks and propagated IoU bars are drawn
    saved = out / "ct.nii.gz"
    assert saved.is_file()

    driver.refresh()
    wait_for(driver, READY)
    assert driver.execute_script("return app.vol.slice") == 4  # the page comes back where the person was
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_DOWN)
    body.send_keys(Keys.ARROW_DOWN)
    wait_for(driver, "app.vol.slice === 2")
    wait_for(driver, "document.querySelectorAll('#objects li').length === 1")
    drawn = "(() => {" + OVERLAY_ALPHA.replace("return s;", "return s > 20000;") + "})()"
    wait_for(driver, drawn)  # the object propagated onto this slice is drawn
    assert "slice 3: propagated" in driver.find_element(By.ID, "strip-info").text
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    target = REPO / "docs" / "annotate_volume.png" if os.environ.get("MEDSAMKIT_SCREENSHOT") == "1" \
        else out.parent / "shot.png"
    shot.quantize(colors=256).save(target, optimize=True)
    assert target.stat().st_size < 400_000


@pytest.fixture(scope="module")
def long_page(litemedsam, tmp_path_factory):
    """(driver, server, workspace, truth): the page of 23 slices (11 each side of the GTV's largest)."""
    with crop_page(litemedsam, tmp_path_factory.mktemp("volume-correct"), 11) as (driver, server, ws, _, truth):
        yield driver, server, ws, truth


@pytest.mark.slow
def test_click_on_a_wrong_slice_corrects_it_and_repropagation_fixes_the_next(long_page):
    """Box on the largest slice, propagate both ways; 10 slices up the walk has lost the tumour: a click there,
    Enter on the selected object (correct), Propagate up: the slice above finds the tumour, the click's slice
    stays as corrected."""
    from scipy import ndimage
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from browser import view_offset
    from medsamkit.metrics import dice

    driver, server, ws, truth = long_page
    driver.get(server.url)
    wait_for(driver, READY)
    assert driver.execute_script("return app.vol.slice") == 11
    ys, xs = np.nonzero(truth[11])
    drag_box(driver, (xs.min(), ys.min(), xs.max(), ys.max()))
    wait_for(driver, "app.answer !== null")
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ENTER)
    wait_for(driver, "document.querySelectorAll('#objects li').length === 1")
    driver.find_element(By.ID, "prop-both").click()
    wait_for(driver, "document.getElementById('strip-info').textContent.includes('stopped at')", timeout=300)
    label = ws.state(driver.execute_script("return app.image")).label
    before = label == 1
    j = 21
    assert dice(before[j], truth[j]) < 0.2  # the walk lost the tumour here
    for _ in range(j - 11):
        body.send_keys(Keys.ARROW_UP)
    wait_for(driver, f"app.vol.slice === {j}")
    wait_for(driver, READY)
    depth = ndimage.distance_transform_edt(truth[j] & ~before[j])
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    overlay = driver.find_element(By.ID, "overlay")
    ActionChains(driver).move_to_element_with_offset(overlay, *view_offset(driver, x, y)).click().perform()
    wait_for(driver, "app.answer !== null")
    driver.find_element(By.CSS_SELECTOR, "#objects li span").click()
    wait_for(driver, "app.selected === 1")
    body.send_keys(Keys.ENTER)
    wait_for(driver, "document.getElementById('notice').textContent.includes('corrected')")
    corrected = (label[j] == 1).copy()
    assert dice(corrected, truth[j]) > 0.8
    driver.execute_script("document.getElementById('strip-info').textContent = ''")
    driver.find_element(By.ID, "prop-up").click()
    wait_for(driver, "document.getElementById('strip-info').textContent.includes('stopped at')", timeout=120)
    after = label == 1
    assert np.array_equal(after[j], corrected) and np.array_equal(after[:j], before[:j])
    assert dice(after[j + 1], truth[j + 1]) > dice(before[j + 1], truth[j + 1]) + 0.3


def test_3d_box_then_a_3d_click_through_the_page(litemedsam, tmp_path):
    """The page drives the 3D engine: a box dragged on the middle slice, slices 1..7, "3D box" makes one object
    on every slice; with "3D clicks" on and the object selected, a positive click at the centre of what it
    missed on another slice corrects that slice (kept as the person's) and re-propagates from it."""
    from scipy import ndimage
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from browser import view_offset
    from medsamkit.metrics import dice

    with crop_page(litemedsam, tmp_path, 3) as (driver, server, ws, _, truth):
        driver.get(server.url)
        wait_for(driver, READY)
        ys, xs = np.nonzero(truth[3])
        drag_box(driver, (xs.min(), ys.min(), xs.max(), ys.max()))
        wait_for(driver, "app.answer !== null")
        driver.execute_script("document.getElementById('z-from').value = 1; document.getElementById('z-to').value = 7")
        driver.find_element(By.ID, "box3d").click()
        # the status of the finished request ("3D box: #1 on ..."), not the "3D box..." shown while it runs: the page
        # selects the new object only when the answer has arrived
        wait_for(driver, "document.getElementById('status').textContent.startsWith('3D box:')", timeout=240)
        image = driver.execute_script("return app.image")
        label = ws.state(image).label
        first = label == 1
        assert first.reshape(7, -1).any(1).sum() >= 5 and dice(first, truth) > 0.5
        assert driver.execute_script("return app.selected") == 1
        k = 5
        miss = truth[k] & ~first[k]
        assert miss.sum() > 20  # the box's answer missed part of the tumour there
        depth = ndimage.distance_transform_edt(miss)
        y, x = np.unravel_index(int(depth.argmax()), depth.shape)
        driver.find_element(By.ID, "clicks3d").click()
        driver.execute_script(f"Vol.go({k})")
        wait_for(driver, f"app.vol.slice === {k}")
        wait_for(driver, READY)
        overlay = driver.find_element(By.ID, "overlay")
        ActionChains(driver).move_to_element_with_offset(overlay, *view_offset(driver, x, y)).click().perform()
        wait_for(driver, "document.getElementById('status').textContent.startsWith('3D click:')", timeout=120)
        after = ws.state(image).label == 1
        record = ws.state(image).record_of(1)
        cx, cy, positive = record["slices"][f"0:{k}"]["click"]
        assert positive == 1 and abs(cx - x) <= 1 and abs(cy - y) <= 1  # where the person clicked (screen rounding)
        assert after[k, cy, cx] and dice(after[k], truth[k]) > dice(first[k], truth[k])
        assert record["slices"][f"0:{k}"]["source"] == "person" and record["propagations"][-1]["kind"] == "click"
        assert driver.execute_script("return app.answer") is None  # no 2D prompt was sent
