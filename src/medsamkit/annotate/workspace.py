"""An annotation session without HTTP: the images, the model, each image's objects and their files.

Every change (commit, delete, rename, hide, undo, redo, accepted proposal) is saved at once, so a session
killed at any moment resumes exactly on reopening. The server (``annotate.server``) only translates HTTP.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsamkit.annotate.segmenter import Answer, Segmenter, ViewKey
from medsamkit.annotate.sources import ImageSource
from medsamkit.annotate.state import ImageAnnotation
from medsamkit.annotate.storage import AnnotationStore, png_bytes
from medsamkit.annotate.views import (
    box_view,
    click_view,
    longer_side,
    paste,
    prompt_in_view,
    view_tiles,
    whole_window,
)
from medsamkit.core.errors import InputError
from medsamkit.core.objects import Window
from medsamkit.core.tiling import window_of
from medsamkit.prompts.simulate import Prompt

CONTRASTS = {"auto": (0.5, 99.5), "minmax": (0.0, 100.0), "high": (2.0, 98.0), "soft": (0.0, 99.9)}


@dataclass
class AnnotateConfig:
    """Inputs of `medsamkit annotate`."""

    source: str
    out: str | None = None
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    classes: list[str] = field(default_factory=list)
    token: bool = True
    window: str | None = None  # volumes: the model input's CT window (name or lo,hi); None: the SPEC's rule
    three_slice: bool = False  # volumes: slices k-1, k, k+1 as the model's three channels
    learn: bool = False  # learn rounds start by themselves (annotate.learning)
    learn_min_objects: int = 20
    learn_budget: float = 180.0  # seconds per learn round
    prefetch: bool = True  # embed a large image's tiles in the background after its first tiled answer


def default_out(source: str) -> Path:
    """FOLDER/annotations for a folder; ./annotations for a builtin or file SPEC."""
    path = Path(source)
    return path / "annotations" if path.is_dir() else Path("annotations")


@dataclass
class PromptSession:
    """The prompts of the object being made on one view: when it started, how many clicks, the last answer
    (in full-image coordinates) and the model view it was answered on (``annotate.views``)."""

    started: float
    clicks: int = 0
    answer: Answer | None = None
    window: Window | None = None  # the model's view of this object, kept for its follow-up clicks
    box: tuple | None = None  # the box the view was chosen for: a new box chooses again
    view_answer: Answer | None = None  # the answer in the view's coordinates (what the model saw)
    view_keys: set = field(default_factory=set)


def encode_png(array: np.ndarray) -> str:
    """base64 PNG (what the API returns for masks)."""
    return base64.b64encode(png_bytes(array)).decode("ascii")


def display_pixels(pixels: np.ndarray, contrast: str = "auto") -> np.ndarray:
    """An 8-bit copy of a view for the page, scaled between the preset's percentiles."""
    if contrast not in CONTRASTS:
        raise InputError(f"unknown contrast {contrast!r}; choose one of: {', '.join(CONTRASTS)}")
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3]
    lo_q, hi_q = CONTRASTS[contrast]
    lo, hi = np.percentile(img, [lo_q, hi_q])
    out = np.clip((img - lo) / max(float(hi - lo), 1e-8), 0, 1) * 255
    return out.round().astype(np.uint8)


def label_rgba(label: np.ndarray) -> np.ndarray:
    """Instance ids packed into an opaque RGBA image (id = R + 256 G) the page decodes exactly."""
    out = np.empty(label.shape + (4,), dtype=np.uint8)
    out[..., 0] = label & 0xFF
    out[..., 1] = label >> 8
    out[..., 2] = 0
    out[..., 3] = 255
    return out


def _serialised(method):
    """Run a state-changing method under the workspace lock (the server answers requests on several threads)."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class Workspace:
    """The session: ``ImageSource`` + ``Segmenter`` + per-image ``ImageAnnotation`` saved by
    ``AnnotationStore``."""

    def __init__(self, cfg: AnnotateConfig, segmenter: Segmenter | None = None) -> None:
        self.cfg = cfg
        self.source = ImageSource(cfg.source, window=cfg.window, three_slice=cfg.three_slice)
        self.store = AnnotationStore(cfg.out or default_out(cfg.source))
        self.store.attach(self.source)
        self.segmenter = segmenter or Segmenter.load(cfg.model, cfg.checkpoint, cfg.device,
                                                     self.store.embedding_folder)
        self.classes = list(cfg.classes) or self.segmenter.class_names
        self.states: dict[str, ImageAnnotation] = {}
        self.sessions: dict[ViewKey, PromptSession] = {}
        self.proposals: dict[ViewKey, list] = {}
        self._prefetched: set[str] = set()  # images whose tiles were queued for embedding (first tiled answer)
        self.committed_sides: list[int] = []  # longer sides (px) of this run's 2D commits: click-only views
        self.lock = threading.RLock()  # the session lock: hold it while changing an image's annotation
        # recorded in each image's JSON, so training can find the image again (training.annotations)
        self.source_record = cfg.source if cfg.source.startswith("builtin:") else str(Path(cfg.source).resolve())
        self.current = self.store.load_session().get("current")
        if self.current not in self.source.entries:
            self.current = self.source.ids[0]

    # --- reading -------------------------------------------------------------------------------------
    def info(self) -> dict:
        """Model, prompt kinds, classes, images and where the person was."""
        kinds = ["box", "box+points"] + (["points"] if self.segmenter.point_prompts else [])
        return {"model": self.segmenter.identity, "prompts": kinds, "point_prompts": self.segmenter.point_prompts,
                "class_head": bool(self.segmenter.class_names), "classes": self.classes,
                "images": [e.describe() for e in self.source.entries.values()], "current": self.current,
                "out": str(self.store.out)}

    def view(self, image: str, axis: int = 0, slice_index: int | None = None) -> tuple[ViewKey, np.ndarray]:
        """The key and pixels of a view (KeyError for an unknown image, InputError for a bad slice)."""
        pixels = self.source.view(image, axis, slice_index)
        return (image, axis, slice_index), pixels

    @_serialised
    def state(self, image: str) -> ImageAnnotation:
        """The image's objects: saved ones, else its labels/ map as editable objects, else none."""
        if image not in self.states:
            entry = self.source.entry(image)
            state = self.store.load(image, entry.shape)
            if state is None:
                label = self.source.label(image)
                default = self.classes[0] if self.classes else None
                state = (ImageAnnotation.from_label_map(label, default_class=default, source=f"{entry.name} labels")
                         if label is not None else ImageAnnotation.empty(entry.shape))
            self.states[image] = state
        return self.states[image]

    def objects(self, image: str) -> dict:
        """Objects of an image plus whether undo/redo are possible."""
        state = self.state(image)
        return {"image": image, "objects": state.objects(), "can_undo": bool(state.undo_stack),
                "can_redo": bool(state.redo_stack)}

    # --- model ---------------------------------------------------------------------------------------
    def open(self, image: str, axis: int = 0, slice_index: int | None = None, wait: bool = True) -> dict:
        """Start (or finish, with ``wait``) the embedding of a view; the person's position is saved."""
        key, pixels = self.view(image, axis, slice_index)
        t0 = time.perf_counter()
        future = self.segmenter.embedding(key, pixels)
        if wait:
            future.result()
            if self.current != image:
                self.current = image
                self.store.save_session(image)
        return {"image": image, "ready": future.done(), "seconds": round(time.perf_counter() - t0, 4)}

    def prompt_view(self, key: ViewKey, shape: tuple[int, int], prompt: Prompt,
                    session: PromptSession | None) -> Window:
        """The model view of a prompt on a 2D image (``annotate.views``: a box by the evaluate rule, clicks
        only by the committed objects' median size); the object's view while its box is unchanged; the whole
        slice for volumes."""
        if self.source.entry(key[0]).kind != "image":
            return whole_window(shape)
        box = None if prompt.box is None else tuple(prompt.box.tolist())
        if session is not None and session.window is not None and session.box == box:
            return session.window
        input_size = int(self.segmenter.model.preprocessing.input_size)
        if prompt.box is not None:
            return box_view(prompt.box, shape, input_size)
        if not len(prompt.points):
            return whole_window(shape)  # no prompt: the segmenter says so
        return click_view(prompt.points[0], self.committed_sides, shape, input_size)

    def _view_of(self, key: ViewKey, pixels: np.ndarray, window: Window) -> tuple[tuple, np.ndarray]:
        """The segmenter's key and the pixels of a model view (the view itself for the whole image)."""
        if tuple(window) == whole_window(pixels.shape[:2]):
            return key, pixels
        return (*key, tuple(window)), window_of(pixels, window)

    def predict(self, image: str, axis: int, slice_index: int | None, box, points, multimask: bool,
                mask_from: int | None = None) -> dict:
        """Masks for a box and/or clicks (x, y, 1|0) on a view, answered on the prompt's model view
        (``prompt_view``) and returned in full-image coordinates; see ``Segmenter.predict``."""
        key, pixels = self.view(image, axis, slice_index)
        pts = np.asarray(points or [], dtype=np.float32).reshape(-1, 3)
        prompt = Prompt(box=box, points=pts[:, :2], labels=pts[:, 2].astype(np.int32))
        t0 = time.perf_counter()
        session = self.sessions.get(key)
        window = self.prompt_view(key, pixels.shape[:2], prompt, session)
        view_key, view_pixels = self._view_of(key, pixels, window)
        view_answer = self.segmenter.predict(view_key, view_pixels, prompt_in_view(prompt, window), multimask,
                                             mask_from)
        answer = dataclasses.replace(view_answer, prompt=prompt,
                                     masks=paste(view_answer.masks, window, pixels.shape[:2]))
        if view_key != key and self.cfg.prefetch and image not in self._prefetched:
            # the image's objects are small: embed its other grid tiles after this answer (views.view_tiles)
            self._prefetched.add(image)
            self.segmenter.prefetch([(f"{image}{list(w)}", window_of(pixels, w))
                                     for w in view_tiles(pixels.shape[:2], self.segmenter.model) if w != window])
        session = session or PromptSession(time.time())
        session.clicks = len(prompt.points) + (prompt.box is not None)
        session.answer, session.view_answer, session.window = answer, view_answer, window
        session.box = None if prompt.box is None else tuple(prompt.box.tolist())
        session.view_keys.add(view_key)
        self.sessions[key] = session
        reply = {"masks": [encode_png(m.astype(np.uint8) * 255) for m in answer.masks],
                 "iou": [round(float(q), 4) for q in answer.iou], "best": answer.best(),
                 "mask_prompted": answer.mask_prompted, "mask_from": answer.mask_from,
                 "seconds": round(time.perf_counter() - t0, 4)}
        suggestion = self.suggest_class(view_key, view_pixels, view_answer)
        if suggestion is not None:
            reply["class_suggestion"] = suggestion
        return reply

    def suggest_class(self, key: ViewKey, pixels: np.ndarray, answer: Answer) -> dict | None:
        """The class head's most likely class for an answer's prompt, with its probability."""
        probs = self.segmenter.class_probabilities(key, pixels, answer)
        if probs is None:
            return None
        names = self.segmenter.class_names
        k = int(np.argmax(probs))
        return {"class": names[k], "probability": round(float(probs[k]), 4),
                "probabilities": {n: round(float(p), 4) for n, p in zip(names, probs)}}

    @_serialised
    def clear(self, image: str, axis: int = 0, slice_index: int | None = None) -> dict:
        """Forget the current prompts of a view (Esc)."""
        key, _ = self.view(image, axis, slice_index)
        session = self.sessions.pop(key, None)
        for view_key in {key} | (session.view_keys if session else set()):
            self.segmenter.forget_prompts(view_key)
        return {"image": image, "cleared": True}

    # --- changes (each saved at once) ----------------------------------------------------------------
    def save(self, image: str) -> dict:
        """Write ``image``'s annotation (labels + JSON) and return its object list; call with ``lock`` held."""
        self.store.save(image, self.source.entry(image).name, self.state(image), self.classes,
                        source=self.source_record)
        return self.objects(image)

    def candidate_of(self, key: ViewKey, candidate: int | None, missing: str) -> tuple[PromptSession, Answer, int]:
        """The view's prompt session, its last answer and the chosen candidate (default: the best predicted IoU);
        ``missing`` is the error when the view has no answer yet."""
        session = self.sessions.get(key)
        if session is None or session.answer is None:
            raise InputError(missing)
        answer = session.answer
        index = answer.best() if candidate is None else int(candidate)
        if not 0 <= index < len(answer.masks):
            raise InputError(f"candidate {index} does not exist (0..{len(answer.masks) - 1})")
        return session, answer, index

    def _check_class(self, name: str | None) -> str | None:
        if name is not None and self.classes and name not in self.classes:
            raise InputError(f"unknown class {name!r}; classes: {', '.join(self.classes)}")
        return name

    @_serialised
    def commit(self, image: str, axis: int, slice_index: int | None, candidate: int | None,
               class_name: str | None) -> dict:
        """The current answer's candidate becomes a new object (class: given, else suggested, else first)."""
        key, pixels = self.view(image, axis, slice_index)
        session, answer, index = self.candidate_of(key, candidate, "nothing to commit: prompt the model first")
        window = session.window or whole_window(pixels.shape[:2])
        suggestion = self.suggest_class(*self._view_of(key, pixels, window), session.view_answer or answer)
        chosen = self._check_class(class_name)
        if chosen is None:
            suggested = suggestion["class"] if suggestion else None
            usable = suggested is not None and (not self.classes or suggested in self.classes)
            chosen = suggested if usable else (self.classes[0] if self.classes else None)
        record = {"class": chosen, "prompt": answer.prompt.as_dict(), "candidate": index,
                  "predicted_iou": round(float(answer.iou[index]), 4), **self.segmenter.identity,
                  "seconds": round(time.time() - session.started, 2), "clicks": session.clicks,
                  "axis": axis, "slice": slice_index, "view": list(window),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if suggestion is not None:
            record["suggested_class"] = suggestion["class"]
            record["suggested_probability"] = suggestion["probability"]
        committed = self.state(image).commit(answer.masks[index], record)
        if self.source.entry(image).kind == "image":
            self.committed_sides.append(longer_side(answer.masks[index]))
        self.clear(image, axis, slice_index)
        return {**self.save(image), "committed": committed}

    @_serialised
    def delete(self, image: str, object_id: int) -> dict:
        """Delete an object."""
        self.state(image).delete(object_id)
        return self.save(image)

    @_serialised
    def update(self, image: str, object_id: int, class_name: str | None = None,
               hidden: bool | None = None) -> dict:
        """Rename an object's class and/or hide or show it."""
        fields: dict = {}
        if class_name is not None:
            fields["class"] = self._check_class(class_name)
        if hidden is not None:
            fields["hidden"] = bool(hidden)
        self.state(image).update(object_id, **fields)
        return self.save(image)

    @_serialised
    def undo(self, image: str) -> dict:
        """Undo the image's last change."""
        change = self.state(image).undo()
        return {**self.save(image), "undone": None if change is None else change.kind}

    @_serialised
    def redo(self, image: str) -> dict:
        """Redo the image's last undone change."""
        change = self.state(image).redo()
        return {**self.save(image), "redone": None if change is None else change.kind}

    # --- everything mode -----------------------------------------------------------------------------
    def everything(self, image: str, axis: int = 0, slice_index: int | None = None) -> dict:
        """Everything-mode proposals for a view, kept until accepted or rejected."""
        key, pixels = self.view(image, axis, slice_index)
        t0 = time.perf_counter()
        records = self.segmenter.everything(pixels)
        self.proposals[key] = list(records)
        rows = [{"index": i, "box": list(r.box), "mask": encode_png(r.crop.astype(np.uint8) * 255),
                 "iou": round(r.predicted_iou, 4), "stability": round(r.stability_score, 4)}
                for i, r in enumerate(records)]
        return {"image": image, "proposals": rows, "seconds": round(time.perf_counter() - t0, 3)}

    @_serialised
    def accept(self, image: str, axis: int, slice_index: int | None, indices: list[int] | None,
               class_name: str | None) -> dict:
        """Commit proposals (``indices``, or every one left when None) as objects, one change each."""
        key, pixels = self.view(image, axis, slice_index)
        left = self.proposals.get(key, [])
        chosen = range(len(left)) if indices is None else indices
        cls = self._check_class(class_name) or (self.classes[0] if self.classes else None)
        state = self.state(image)
        accepted = []
        for i in chosen:
            if not 0 <= int(i) < len(left) or left[int(i)] is None:
                raise InputError(f"proposal {i} does not exist or was already used")
            rec = left[int(i)]
            mask = rec.mask(pixels.shape[:2])
            if mask.any():
                accepted.append(state.commit(mask, {
                    "class": cls, "prompt": None, "source": "everything",
                    "predicted_iou": round(rec.predicted_iou, 4),
                    **self.segmenter.identity, "seconds": 0.0, "clicks": 0, "axis": axis, "slice": slice_index,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})["id"])
            left[int(i)] = None
        return {**self.save(image), "accepted": accepted}

    @_serialised
    def reject(self, image: str, axis: int, slice_index: int | None, indices: list[int] | None) -> dict:
        """Drop proposals (``indices``, or all when None)."""
        key, _ = self.view(image, axis, slice_index)
        left = self.proposals.get(key, [])
        for i in range(len(left)) if indices is None else indices:
            if 0 <= int(i) < len(left):
                left[int(i)] = None
        return {"image": image, "left": sum(r is not None for r in left)}
