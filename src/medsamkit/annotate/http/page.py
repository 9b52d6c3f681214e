"""The page and its files (a fixed list: no path from a client reaches the file system), and ``/docs``: the API
described from its schema as plain HTML, with no script (nothing is loaded from another origin)."""

from __future__ import annotations

import html
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from medsamkit.annotate.http.requests import PathId

STATIC = resources.files("medsamkit.annotate") / "static"
STATIC_FILES = {"annotate.js": "text/javascript", "view.js": "text/javascript", "annotate.css": "text/css",
                "volume.js": "text/javascript", "learn.js": "text/javascript"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> Response:
    """The annotation page."""
    return Response((STATIC / "index.html").read_bytes(), media_type="text/html")


@router.get("/favicon.ico")
def favicon() -> Response:
    """No icon."""
    return Response(status_code=204)


@router.get("/static/{name}")
def static(name: PathId) -> Response:
    """One of the page's files."""
    if name not in STATIC_FILES:
        raise KeyError(name)
    return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    """The API's description and its routes with their request bodies (the schema is /openapi.json)."""
    schema = request.app.openapi()
    rows = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            ref = body.get("$ref", "").rsplit("/", 1)[-1]
            rows.append(f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op.get('summary', ''))}</td><td>{html.escape(ref)}</td></tr>")
    info = schema["info"]
    text = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(info['title'])}"
            f"</title></head><body><h1>{html.escape(info['title'])}</h1><pre>{html.escape(info['description'])}"
            "</pre><p>Schema: <a href='/openapi.json'>/openapi.json</a></p><table><tr><th>method</th><th>path"
            "</th><th>what</th><th>body</th></tr>" + "".join(rows) + "</table></body></html>")
    return HTMLResponse(text)
