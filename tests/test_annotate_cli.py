"""`medsamkit annotate` as a person starts it: one line with the URL and a fresh token, the API answers
with that token only, a non-loopback --host warns, Ctrl-C stops it; bad arguments are one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from medsamkit.annotate.http.launch import free_port  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "medsamkit", "annotate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _get(url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)).save(tmp_path / "a.png")
    return tmp_path


def test_prints_one_url_line_and_serves_with_its_token(folder, weights_path):
    port = free_port()
    proc = _start([str(folder), "--port", str(port), "--host", "127.0.0.2", "--device", "cpu"])
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith(f"medsamkit annotate: http://127.0.0.2:{port}/?token="), line
        token = line.split("token=", 1)[1]
        assert len(token) >= 24
        base = f"http://127.0.0.2:{port}"
        status, info = _get(f"{base}/api/info", token)
        assert status == 200 and info["images"][0]["id"] == "a" and info["out"] == str((folder / "annotations").resolve())
        status, err = _get(f"{base}/api/info")
        assert status == 401 and list(err) == ["error"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert "token is the only protection" in stderr
    assert proc.returncode in (0, 1, -signal.SIGINT) and "Traceback" not in stderr


def test_bad_arguments_are_one_line_errors(tmp_path):
    proc = _start([str(tmp_path / "missing")])
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and stderr.strip().startswith("error:") and "missing" in stderr
    assert len(stderr.strip().splitlines()) == 1
