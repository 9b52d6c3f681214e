"""The annotation server against hostile or broken requests, on the real bundled model and builtin data: numbers
that are not finite, text that cannot be saved or served, oversized bodies and fields, foreign Host headers
(DNS rebinding) and framing; every refusal is one line of JSON, and an image's objects stay readable."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medsamkit.annotate.http.app import create_app  # noqa: E402
from medsamkit.annotate.model.segmenter import Segmenter  # noqa: E402
from medsamkit.annotate.session.config import AnnotateConfig  # noqa: E402
from medsamkit.annotate.session.workspace import Workspace  # noqa: E402
from medsamkit.core.errors import InputError  # noqa: E402
from medsamkit.models.loading import weights_identity  # noqa: E402

DSB = "dsb-nuclei_img2d"
BOX = [215, 262, 262, 308]
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("guard-embeddings")


@pytest.fixture
def make_client(litemedsam, cache_dir, tmp_path):
    """A TestClient of builtin:dsb-nuclei writing to tmp_path/out (no token unless given)."""

    def make(token: str | None = None, host: str = "127.0.0.1") -> TestClient:
        ws = Workspace(AnnotateConfig("builtin:dsb-nuclei", out=str(tmp_path / "out"), host=host),
                       Segmenter(litemedsam, cache_dir, weights_identity("litemedsam", None)))
        return TestClient(create_app(ws, token), base_url="http://127.0.0.1")

    return make


def one_line_error(res, status: int) -> str:
    assert res.status_code == status, res.text
    body = res.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in res.text
    return body["error"]


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_a_box_or_point_that_is_not_a_finite_number_is_a_400(make_client, number):
    client = make_client()
    box = b'{"image": "%s", "box": [%s, 262, 262, 308]}' % (DSB.encode(), number)
    assert "finite" in one_line_error(client.post("/api/predict", content=box, headers=JSON), 400)
    point = b'{"image": "%s", "box": [215, 262, 262, 308], "points": [[230, %s, 1]]}' % (DSB.encode(), number)
    assert "finite" in one_line_error(client.post("/api/predict", content=point, headers=JSON), 400)
    assert client.post("/api/predict", json={"image": DSB, "box": BOX}).status_code == 200


def test_the_session_refuses_non_finite_prompts_without_http(make_client):
    ws = make_client().app.state.workspace
    for box, points in (([np.nan, 262, 262, 308], []), ([215, 262, np.inf, 308], []), (BOX, [[np.nan, 5, 1]])):
        with pytest.raises(InputError, match="finite"):
            ws.predict(DSB, 0, None, box, points, False)


@pytest.mark.parametrize("name", ["a\u0000b\ud800", "lone \ud800", "nul\u0000", "line\nbreak", "x" * 10_000])
def test_bad_class_names_are_refused_and_the_objects_stay_readable(make_client, name):
    client = make_client()
    client.post("/api/predict", json={"image": DSB, "box": BOX})
    commit = json.dumps({"image": DSB, "class": name}).encode()  # \ud800 travels as an escape, as browsers send it
    one_line_error(client.post("/api/commit", content=commit, headers=JSON), 400)
    committed = client.post("/api/commit", json={"image": DSB, "class": "nucleus"}).json()["committed"]
    update = json.dumps({"image": DSB, "object": committed["id"], "class": name}).encode()
    one_line_error(client.post("/api/objects/update", content=update, headers=JSON), 400)
    assert client.get(f"/api/objects/{DSB}").status_code == 200
    assert client.post("/api/undo", json={"image": DSB}).json()["undone"] == "commit"
    assert client.post("/api/redo", json={"image": DSB}).json()["redone"] == "commit"
    again = make_client()  # a restart on the same --out reads every file back
    assert again.get(f"/api/objects/{DSB}").json()["objects"][-1]["class"] == "nucleus"


@pytest.mark.parametrize("image", ["a\u0000b\ud800", "\ud800", "x" * 1000, "tab\tid"])
def test_ids_that_are_not_printable_text_are_a_400_everywhere(make_client, image):
    client = make_client()
    for path, body in (("/api/open", {"image": image}), ("/api/predict", {"image": image, "box": BOX}),
                       ("/api/undo", {"image": image}), ("/api/objects/delete", {"image": image, "object": 1})):
        one_line_error(client.post(path, content=json.dumps(body).encode(), headers=JSON), 400)
    for path in ("/api/objects/a%00b", "/api/objects/%ED%A0%80", "/api/labels/a%1Fb"):
        res = client.get(path)
        assert 400 <= res.status_code < 500 and list(res.json()) == ["error"], res.text


def test_an_image_saved_with_a_lone_surrogate_is_served_again(make_client, tmp_path):
    """A JSON written by an earlier version with an unencodable class name is repaired on reading."""
    client = make_client()
    client.post("/api/predict", json={"image": DSB, "box": BOX})
    client.post("/api/commit", json={"image": DSB, "class": "nucleus"})
    saved = tmp_path / "out" / f"{DSB}.json"
    saved.write_text(saved.read_text().replace('"class": "nucleus"', '"class": "a\\ud800b"'))
    objects = make_client().get(f"/api/objects/{DSB}")
    assert objects.status_code == 200 and objects.json()["objects"][-1]["class"] == "a?b"


def test_bodies_and_fields_have_size_limits(make_client):
    client = make_client()
    huge = b'{"image": "' + b"x" * 10_000_000 + b'"}'
    assert "body" in one_line_error(client.post("/api/open", content=huge, headers=JSON), 413)
    chunked = iter([b'{"image": "', b"x" * 100_000, b'"}'])  # no Content-Length: counted as it arrives
    assert "body" in one_line_error(client.post("/api/open", content=chunked, headers=JSON), 413)
    too_many = {"image": DSB, "box": BOX, "points": [[230, 280, 1]] * 201}
    one_line_error(client.post("/api/predict", json=too_many), 400)
    one_line_error(client.post("/api/open", json={"image": "x" * 257}), 400)
    long_name = json.dumps({"image": DSB, "class": "x" * 100_000}).encode()  # over the body limit before the field's
    one_line_error(client.post("/api/commit", content=long_name, headers=JSON), 413)


@pytest.mark.parametrize("token", [None, "t0ken"])
def test_only_this_servers_host_names_are_answered(make_client, token):
    client = make_client(token)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.nip.io", "localhost.evil.example", ""):
        for path in ("/", "/api/info", "/static/annotate.js", "/docs", "/openapi.json"):
            assert "Host" in one_line_error(client.get(path, headers={**auth, "Host": host}), 400)
    for host in ("127.0.0.1:8765", "localhost", "LOCALHOST:1", "[::1]:8765"):
        assert client.get("/api/info", headers={**auth, "Host": host}).status_code == 200, host
    lan = make_client(token, host="10.1.2.3")
    assert lan.get("/api/info", headers={**auth, "Host": "10.1.2.3:8765"}).status_code == 200
    assert lan.get("/api/info", headers={**auth, "Host": "10.1.2.4:8765"}).status_code == 400


def test_the_page_cannot_be_framed_and_runs_only_its_own_files(make_client):
    client = make_client()
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"  # the token travels in the page's URL
    assert client.get("/api/info").headers["x-frame-options"] == "DENY"
    html = page.text
    assert html.count("<script") == html.count('<script src="/static/') and "style=" not in html
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/api/predict" in docs.text and "/openapi.json" in docs.text
    assert "<script" not in docs.text.lower() and not re.search(r"(src|href)=['\"]?(https?:)?//", docs.text)
    assert client.get("/docs/oauth2-redirect").status_code == 404 and client.get("/redoc").status_code == 404
