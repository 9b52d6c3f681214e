"""Latency of `medsamkit annotate` as a person feels it, through a real uvicorn on loopback:

- predict: POST /api/predict with one box on an already embedded 512x512 image (builtin:dsb-nuclei),
  median of --calls calls (target <= 60 ms);
- first mask: opening a not yet embedded image (empty cache) until its first box mask (target <= 1.5 s);
- browser: mouse release to overlay drawn, from the page's own performance marks, median over --drags
  drags in headless Chromium (target <= 150 ms; skipped without chromium/chromedriver).

Prints JSON (with the 1-minute load average, so noisy runs are visible).
Usage: python benchmarks/annotate_latency.py [--calls 30] [--drags 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from medsamkit.annotate.launch import BackgroundServer
from medsamkit.annotate.workspace import AnnotateConfig, Workspace
from medsamkit.core import runtime
from medsamkit.io.datasets import open_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BOXES = [(215, 262, 262, 308), (300, 112, 345, 160), (118, 380, 160, 425), (402, 236, 446, 282)]


def _folder(root: Path) -> Path:
    """Two 8-bit copies of the 512x512 DSB image (the second flipped: another embedding)."""
    image = next(open_dataset("builtin:dsb-nuclei").cases()).image.astype(np.float32)
    u8 = (np.clip((image - image.min()) / (np.percentile(image, 99.7) - image.min()), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(u8).save(root / "a.png")
    Image.fromarray(u8[::-1].copy()).save(root / "b.png")
    return root


def _http(server: BackgroundServer, calls: int) -> dict:
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.base, headers=auth, timeout=120) as client:
        t0 = time.perf_counter()
        client.post("/api/open", json={"image": "b"})
        client.post("/api/predict", json={"image": "b", "box": list(BOXES[0])})
        first = time.perf_counter() - t0
        client.post("/api/open", json={"image": "a"})
        times, server = [], []
        for i in range(calls + 2):
            box = list(BOXES[i % len(BOXES)])
            box[2] += i % 7  # a new box every call: no answer from memory
            t = time.perf_counter()
            res = client.post("/api/predict", json={"image": "a", "box": box})
            res.raise_for_status()
            times.append(time.perf_counter() - t)
            server.append(res.json()["seconds"])
    return {"predict_http_median_ms": round(1000 * statistics.median(times[2:]), 1),
            "predict_http_p90_ms": round(1000 * float(np.percentile(times[2:], 90)), 1),
            # the same calls timed inside the server (model + masks + PNGs): the rest is HTTP and JSON
            "predict_in_server_median_ms": round(1000 * statistics.median(server[2:]), 1),
            "first_mask_new_image_s": round(first, 3)}


def _browser(server: BackgroundServer, drags: int) -> dict:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        from test_annotate_browser import drag_box, wait_for  # the test's helpers: one way to drag
    except ImportError as exc:
        return {"browser": f"skipped ({exc.name} missing)"}
    chrome, driver_path = shutil.which("chromium") or shutil.which("google-chrome"), shutil.which("chromedriver")
    if not chrome or not driver_path:
        return {"browser": "skipped (chromium/chromedriver missing)"}
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,700"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.get(server.url)
        wait_for(driver, "document.getElementById('status').textContent.startsWith('ready')")
        for i in range(drags):
            x0, y0, x1, y1 = BOXES[i % len(BOXES)]
            drag_box(driver, (x0, y0, x1 + i % 5, y1))
            wait_for(driver, f"performance.getEntriesByName('release-to-overlay').length >= {i + 1}")
        ms = driver.execute_script("return performance.getEntriesByName('release-to-overlay').map(e => e.duration)")
    finally:
        driver.quit()
    return {"release_to_overlay_median_ms": round(statistics.median(ms), 1),
            "release_to_overlay_max_ms": round(max(ms), 1), "drags": len(ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--drags", type=int, default=10)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    runtime.setup()
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(Path(tmp))
        ws = Workspace(AnnotateConfig(str(folder), device=args.device))
        with BackgroundServer(ws, token="bench") as server:
            result = _http(server, args.calls)
            result.update(_browser(server, args.drags))
        ws.segmenter.close()
    print(json.dumps({
        "device": str(ws.segmenter.predictor.device), "threads": torch.get_num_threads(),
        "load_avg_1min": float(open("/proc/loadavg").read().split()[0]), "calls": args.calls, **result,
        "targets": {"predict_http_median_ms": 60, "first_mask_new_image_s": 1.5, "release_to_overlay_median_ms": 150},
    }))


if __name__ == "__main__":
    main()
