"""MONAI Label's REST API over the same session (``annotate --monailabel``), so 3D Slicer's MONAI Label module,
OHIF's MONAI Label mode, QuPath and other MONAI Label clients drive medsamkit. It lives under
``/monailabel/TOKEN/`` (``guards``: those clients keep a URL's path but send no header; with --no-token under
``/monailabel/``) and is left out of /docs and /openapi.json, which would show the token.

- ``GET /info/`` -> the app: the interactive model ``MODEL`` ("deepgrow" type, 2D: clicks on one slice of a
  volume, and a "roi" box), the automatic one ``AUTO`` ("segmentation" type: everything mode on a 2D image or
  the slice ``params["slice"]`` of a volume), the labels (``--class-names``), the strategies, the datastore.
- ``POST /infer/MODEL|AUTO?image=ID[&session_id=][&output=image|json|all]`` with form ``params`` (JSON:
  ``foreground`` / ``background`` [[x, y(, z)], ...] voxel indices, ``roi`` [x0, x1, y0, y1(, z0, z1)],
  ``slice``, ``label``, ``reset_state``, ``client_id``) -> multipart: ``params`` (JSON) and the label file
  (1 inside the answer) in the image's space: NIfTI on a volume's grid, PNG for a 2D image.
- ``GET /datastore/[?output=all|json]``: counts, or every image with its saved label; ``PUT /datastore/`` or
  ``/datastore/image?image=ID`` with a form ``file``: a new image (stored in --out/uploads); ``GET
  /datastore/image?image=ID``: the image file; ``PUT /datastore/label?image=ID&tag=final`` with a form
  ``label`` file (and ``params`` with ``label_info`` [{"name", "idx"}]): the label becomes the image's objects
  in the annotation folder; ``GET /datastore/label?label=ID&tag=final``: the saved objects as one label file.
- ``POST /activelearning/random|first`` -> the next image without a saved label (``{}`` when none).
- ``POST /train/`` or ``/train/MODEL``: start a learn round (``annotate.model.learning``); ``GET /train/``: its
  state as MONAI Label's task (``?check_if_running=true``: 200 while running, else 404); ``DELETE /train/``.
- ``PUT /session/`` with form ``files``: an image for ``infer?session_id=``; ``GET`` / ``DELETE
  /session/ID``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from medsamkit import __version__
from medsamkit.annotate.http.requests import session
from medsamkit.annotate.session.exchange import STRATEGIES, ClientFile, Exchange
from medsamkit.annotate.session.workspace import Workspace
from medsamkit.core.errors import InputError

MODEL = "medsamkit"
AUTO = "medsamkit_everything"  # the automatic ("segmentation") model: everything mode on a 2D image or a slice
TAG = "final"  # MONAI Label's tag of a finished label; the annotation folder keeps one label per image
router = APIRouter(include_in_schema=False)


def exchange(ws: Workspace = Depends(session)) -> Exchange:
    """The session as outside clients see it."""
    return Exchange(ws)


def labels(ws: Workspace) -> list[str]:
    """The label names clients show (the session's classes; one generic name without any)."""
    return list(ws.classes) or ["object"]


def file_reply(file: ClientFile) -> Response:
    """A file download with its name."""
    return Response(file.data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{file.name}"', "Cache-Control": "no-store"})


def multipart_reply(params: dict, file: ClientFile) -> Response:
    """MONAI Label's infer answer: a multipart form with ``params`` (JSON) and the label file."""
    boundary = secrets.token_hex(16)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\nContent-Type: application/json"
            f"\r\n\r\n{json.dumps(params)}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{file.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body = head + file.data + f"\r\n--{boundary}--\r\n".encode()
    return Response(body, media_type=f"multipart/form-data; boundary={boundary}")


async def form_of(request: Request) -> tuple[dict, dict[str, tuple[str, bytes]]]:
    """A request's form: text fields, and files as (file name, bytes)."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("multipart/", "application/x-www-form-urlencoded")):
        return {}, {}
    form = await request.form()
    fields, files = {}, {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields[key] = value
        else:
            files.setdefault(key, (value.filename or "", await value.read()))
    return fields, files


def params_of(text: str | None) -> dict:
    """The JSON ``params`` field (400 when it is not a JSON object)."""
    try:
        params = json.loads(text or "{}")
    except ValueError:
        raise InputError("params: not JSON") from None
    if not isinstance(params, dict):
        raise InputError("params: must be a JSON object")
    return params


async def json_body(request: Request) -> dict:
    """An optional JSON object body (``{}`` when none)."""
    raw = await request.body()
    return params_of(raw.decode("utf-8", "replace")) if raw.strip() else {}


def client_of(params: dict) -> str:
    """Our prompt sessions' client id for a MONAI Label client (its ``client_id``, made safe)."""
    given = re.sub(r"[^A-Za-z0-9_-]+", "_", str(params.get("client_id") or ""))[:40]
    return f"monailabel-{given}" if given else "monailabel"


# --- info, infer ------------------------------------------------------------------------------------------------
@router.get("/info/")
def info(ex: Exchange = Depends(exchange)) -> dict:
    """The app as MONAI Label clients read it."""
    ws = ex.ws
    names = labels(ws)
    name = ws.segmenter.identity.get("model", "model")
    model = {"type": "deepgrow", "dimension": 2, "labels": names, "config": {},
             "description": f"{name}: clicks and a box (roi) on one view"}
    auto = {"type": "segmentation", "dimension": 2, "labels": names[:1], "config": {},
            "description": f"{name} everything mode: every object found on a 2D image or one slice ('slice')"}
    rounds = ws.learning.status() if ws.learning is not None else {}
    return {"name": "medsamkit", "description": "medsamkit annotate (MONAI Label-compatible API)",
            # volumes: not listed, as Slicer runs a listed automatic model on every next sample's whole volume
            "version": __version__, "labels": names,
            "models": {MODEL: model} if ws.source.spec.volumes else {MODEL: model, AUTO: auto},
            "trainers": {MODEL: {"description": "learn round: fine-tune the decoder on the saved labels",
                                 "config": {}}},
            "strategies": {k: {"description": v} for k, v in STRATEGIES.items()}, "scoring": {},
            "train_stats": train_stats(rounds), "datastore": status_of(ex)}


def train_stats(rounds: dict) -> dict:
    """The last learn round as MONAI Label's train stats (Slicer's progress bar: epoch of total_epochs while
    it runs, total_time once done; best_metric: the mean validation Dice over the prompt types)."""
    job = rounds.get("job") or {}
    if not job:
        return {}
    dice = [v for v in (job.get("after") or job.get("before") or {}).values() if isinstance(v, (int, float))]
    running = rounds.get("phase") == "training"
    return {MODEL: {"epoch": int(100 * job.get("progress", 0)), "total_epochs": 100,
                    "total_time": 0 if running else job.get("seconds", 0),
                    "best_metric": round(sum(dice) / len(dice), 4) if dice else 0,
                    "phase": rounds.get("phase"), "version": rounds.get("current")}}


@router.post("/infer/{model}")
async def infer(model: str, request: Request, image: str = "", session_id: str = "", output: str | None = None,
                ex: Exchange = Depends(exchange)) -> Response:
    """A click / box answer as a label file (NIfTI on a volume's grid, PNG for a 2D image)."""
    if model not in (MODEL, AUTO):
        raise KeyError(f"model {model} (this server has {MODEL} and {AUTO})")
    fields, files = await form_of(request)
    params = params_of(fields.get("params"))
    if "file" in files:
        name, data = files["file"]
        image = await run_in_threadpool(ex.upload, image or name, name, data)
    ident = ex.resolve(session_id or image)
    if model == AUTO:
        answer = await run_in_threadpool(ex.everything, ident, params.get("slice"), client_of(params))
    else:
        answer = await run_in_threadpool(ex.answer, ident, params.get("foreground") or [],
                                         params.get("background") or [], params.get("roi") or None,
                                         params.get("slice"), client_of(params), bool(params.get("reset_state")))
    reply = {"label": params.get("label") or labels(ex.ws)[0], "label_names": {params.get("label") or
             labels(ex.ws)[0]: 1}, "slice": answer.slice, "points": answer.points, "box": answer.box,
             "iou": round(answer.iou, 4), "latency": {"infer": answer.seconds}}
    if output == "json":
        return Response(json.dumps(reply), media_type="application/json")
    file = await run_in_threadpool(ex.label_file, ident, answer.label)
    return file_reply(file) if output == "image" else multipart_reply(reply, file)


# --- datastore ------------------------------------------------------------------------------------------------
def status_of(ex: Exchange) -> dict:
    """MONAI Label's datastore counts."""
    done = len(ex.labelled())
    return {"total": len(ex.ws.source.ids), "completed": done, "label_tags": {TAG: done} if done else {}}


@router.get("/datastore/")
def datastore(output: str | None = None, ex: Exchange = Depends(exchange)) -> dict:
    """Counts, or (``output=all|json``) every image with its saved label."""
    if output not in ("all", "json"):
        return status_of(ex)
    done = set(ex.labelled())
    objects = {}
    ext = ".nii.gz" if ex.ws.source.spec.volumes else ".png"
    for item in ex.ws.source.items.values():
        objects[item.id] = {"image": {"ext": ext, "info": {"name": item.name}},
                            "labels": {TAG: {"ext": ext, "info": {}}} if item.id in done else {}}
    return {"name": "medsamkit", "description": f"annotations in {ex.ws.files.out}", "images_dir": "",
            "labels_dir": str(ex.ws.files.out), "objects": objects}


@router.put("/datastore/")
@router.put("/datastore/image")
async def add_image(request: Request, image: str = "", ex: Exchange = Depends(exchange)) -> dict:
    """A new image (form ``file``), stored in --out/uploads."""
    _, files = await form_of(request)
    if "file" not in files:
        raise InputError("give the image as form field 'file'")
    name, data = files["file"]
    return {"image": await run_in_threadpool(ex.upload, image or name, name, data)}


@router.get("/datastore/image")
def download_image(image: str, ex: Exchange = Depends(exchange)) -> Response:
    """The image as a file (NIfTI for a volume, PNG for a 2D image)."""
    return file_reply(ex.image_file(ex.resolve(image)))


@router.get("/datastore/image/info")
def image_info(image: str, ex: Exchange = Depends(exchange)) -> dict:
    """What the session knows of an image."""
    return ex.ws.item(ex.resolve(image)).describe()


@router.put("/datastore/label")
async def save_label(request: Request, image: str, tag: str = TAG, ex: Exchange = Depends(exchange)) -> dict:
    """A finished label map (form ``label``) becomes the image's objects in the annotation folder."""
    fields, files = await form_of(request)
    if "label" not in files:
        raise InputError("give the label as form field 'label'")
    params = params_of(fields.get("params"))
    names = {int(i["idx"]): str(i["name"]) for i in params.get("label_info") or []
             if isinstance(i, dict) and "idx" in i and "name" in i}
    ident = ex.resolve(image)
    name, data = files["label"]
    saved = await run_in_threadpool(ex.save_label, ident, data, name, names, tag or TAG)
    return {"image": ident, "label": ident, "tag": tag or TAG, "objects": len(saved.objects),
            "saved": str(ex.ws.files.out)}


@router.get("/datastore/label")
def download_label(label: str, tag: str = TAG, ex: Exchange = Depends(exchange)) -> Response:
    """The saved objects as one label file (404 when the image has none)."""
    return file_reply(ex.saved_label(ex.resolve(label)))


# --- active learning, train -------------------------------------------------------------------------------------
@router.post("/activelearning/{strategy}")
async def next_sample(strategy: str, request: Request, ex: Exchange = Depends(exchange)) -> dict:
    """The next image without a saved label by ``strategy`` ({} when every image has one)."""
    await json_body(request)
    ident = ex.next_sample(strategy)
    if ident is None:
        return {}
    item = ex.ws.item(ident)
    return {"id": ident, "name": item.name, "path": "", "url": f"/datastore/image?image={ident}",
            "checksum": None, "strategy": strategy}


def rounds_of(ws: Workspace):
    """The session's learn rounds (started with the app)."""
    if ws.learning is None:
        raise KeyError("learning (the app was not started)")
    return ws.learning


def task_of(state: dict) -> dict:
    """A learn round's state as MONAI Label's train task."""
    job = state.get("job") or {}
    phase = state.get("phase")
    status = {"training": "RUNNING", "updated": "DONE", "kept": "DONE", "failed": "ERROR"}.get(phase, "NOT_STARTED")
    if not job:
        status = "NOT_STARTED"
    detail = job.get("reason") or f"learn round phase: {phase}"
    return {"id": str(job.get("number", "")), "status": status, "start_ts": job.get("started"),
            "end_ts": None if status == "RUNNING" else job.get("started", 0) + job.get("seconds", 0),
            "result": {k: v for k, v in job.items() if isinstance(v, (str, int, float, bool, type(None)))},
            "details": [detail], "phase": phase, "version": state.get("current")}


@router.get("/train/")
def train_status(check_if_running: bool = False, ws: Workspace = Depends(session)) -> Response:
    """The learn round as MONAI Label's train task."""
    task = task_of(rounds_of(ws).status())
    if check_if_running:
        running = task["status"] == "RUNNING"
        return Response(json.dumps(task if running else {}), status_code=200 if running else 404,
                        media_type="application/json")
    return Response(json.dumps(task), media_type="application/json")


@router.post("/train/")
@router.post("/train/{model}")
async def train_start(request: Request, model: str = MODEL, ws: Workspace = Depends(session)) -> dict:
    """Start a learn round now (400 with the reason when it cannot)."""
    if model != MODEL:
        raise KeyError(f"model {model} (this server has {MODEL})")
    await json_body(request)
    return task_of(rounds_of(ws).start())


@router.delete("/train/")
def train_stop(ws: Workspace = Depends(session)) -> dict:
    """Stop the running learn round (the model stays as it is)."""
    return task_of(rounds_of(ws).stop())


# --- sessions: an image for infer?session_id= ----------------------------------------------------------------
@router.put("/session/")
async def create_session(request: Request, ex: Exchange = Depends(exchange)) -> dict:
    """An uploaded image (form ``files``) as a session; its id names it in infer."""
    _, files = await form_of(request)
    if "files" not in files:
        raise InputError("give the image as form field 'files'")
    name, data = files["files"]
    ident = f"session_{hashlib.sha256(data).hexdigest()[:16]}"
    ident = await run_in_threadpool(ex.upload, ident, name, data)
    return {"session_id": ident, "session_info": {"name": name, "image": ident}}


@router.get("/session/{session_id}")
def get_session(session_id: str, ex: Exchange = Depends(exchange)) -> dict:
    """A session (404 when there is none)."""
    ident = ex.resolve(session_id)
    return {"session_id": ident, "name": ex.ws.item(ident).name, "image": ident}


@router.delete("/session/{session_id}")
def remove_session(session_id: str, ex: Exchange = Depends(exchange)) -> dict:
    """Sessions are uploads kept in --out/uploads (their objects may be saved): nothing is removed."""
    return {"session_id": ex.resolve(session_id)}
