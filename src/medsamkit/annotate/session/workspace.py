"""An annotation session without HTTP: the items, the model, each item's objects and their files, every client's
prompt sessions. Operations return domain objects (``annotate.session.results``).

Every change (commit, delete, rename, hide, undo, redo, accepted proposal, correction, propagation run) is
saved at once, so a session killed at any moment resumes exactly on reopening. Locks: ``annotate`` (the package
docstring) holds the one policy; ``lock`` here guards the annotations and their files.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future

import numpy as np

from medsamkit.annotate.model.answers import Answer, ViewKey
from medsamkit.annotate.model.engine3d import Engines3D
from medsamkit.annotate.model.host import ModelLaunch
from medsamkit.annotate.model.learning import LearnController, LearnSettings
from medsamkit.annotate.model.propagation import Propagator
from medsamkit.annotate.model.segmenter import Segmenter
from medsamkit.annotate.session.config import AnnotateConfig, default_out
from medsamkit.annotate.session.items import Item, ItemSource, display_pixels
from medsamkit.annotate.session.locking import serialised
from medsamkit.annotate.session.prompting import ANONYMOUS, ClientViews, PromptSession
from medsamkit.annotate.session.records import answer_record, proposal_record
from medsamkit.annotate.session.results import (
    Changed,
    ClassSuggestion,
    ObjectList,
    Opened,
    Predicted,
    Proposals,
    SessionInfo,
)
from medsamkit.annotate.session.state import ImageAnnotation
from medsamkit.annotate.session.views import ViewRule, paste, prompt_in_view, view_tiles, whole_window
from medsamkit.annotate.session.volume_work import VolumeWork
from medsamkit.core.errors import InputError
from medsamkit.core.objects import Window
from medsamkit.core.tiling import window_of
from medsamkit.io.annotations import AnnotationFolder, check_text
from medsamkit.prompts.search_settings import search_settings
from medsamkit.prompts.simulate import Prompt


class Workspace(VolumeWork):
    """The session: ``ItemSource`` + ``Segmenter`` + per-item ``ImageAnnotation`` in an ``AnnotationFolder``."""

    def __init__(self, cfg: AnnotateConfig, segmenter: Segmenter | None = None) -> None:
        check_text(cfg.class_names, "--class-names")
        self.cfg = cfg
        self.source = ItemSource(cfg.source, window=cfg.window, three_slice=cfg.three_slice)
        self.files = AnnotationFolder(cfg.out or default_out(cfg.source))
        self.launch = ModelLaunch(cfg.model, cfg.checkpoint, cfg.device)
        search = search_settings(cfg.click_ranker)
        self.segmenter = segmenter or Segmenter.load(cfg.model, cfg.checkpoint, cfg.device,
                                                     self.files.embedding_folder, cfg.clicks, search,
                                                     cfg.box_output)
        self.classes = list(cfg.class_names) or self.segmenter.class_names
        self.states: dict[str, ImageAnnotation] = {}
        self.prompts: ClientViews[PromptSession] = ClientViews()
        self.proposals: ClientViews[list] = ClientViews()
        self.view_rule = ViewRule()
        self.propagator = Propagator(self.segmenter)
        self.engines3d = Engines3D(clicks=cfg.clicks, search=search)
        self.learning: LearnController | None = None
        self._prefetched: set[str] = set()  # images whose tiles were queued for embedding (first tiled answer)
        self.lock = threading.RLock()
        self.source_record = self.source.spec.record  # in each image's JSON: training finds the image again
        for path in self.files.upload_files():  # images a client sent in an earlier run
            try:
                if path.name.split(".")[0] not in self.source.items:  # the SPEC's own items come first
                    self.source.add_uploaded(path, path.name.split(".")[0])
            except InputError:
                pass  # not this session's kind (a 2D upload beside volumes): left as it is
        current = self.files.load_session().get("current")
        self.current = current if current in self.source.items else self.source.ids[0]

    # --- reading -------------------------------------------------------------------------------------
    def info(self) -> SessionInfo:
        """Model, prompt kinds, classes, items and where the person was."""
        seg = self.segmenter
        return SessionInfo(seg.identity, seg.point_prompts, seg.click_strategy, bool(seg.class_names), self.classes,
                           [item.describe() for item in self.source.items.values()], self.current,
                           str(self.files.out))

    def item(self, image: str) -> Item:
        """An item by id (KeyError: a 404)."""
        return self.source.item(image)

    def view(self, image: str, axis: int = 0, slice_index: int | None = None) -> tuple[ViewKey, np.ndarray]:
        """The key and pixels of a view (KeyError for an unknown image, InputError for a bad slice)."""
        return (image, axis, slice_index), self.item(image).view(axis, slice_index)

    def display(self, image: str, axis: int, slice_index: int | None, contrast: str = "auto") -> np.ndarray:
        """A view as 8-bit pixels for the page (contrast preset applied)."""
        return display_pixels(self.view(image, axis, slice_index)[1], contrast)

    @serialised
    def state(self, image: str) -> ImageAnnotation:
        """The item's objects: saved ones, else its SPEC's labels as editable objects, else none."""
        if image not in self.states:
            item = self.item(image)
            state = item.read_annotation(self.files)
            if state is None:
                state = item.new_annotation(self.classes[0] if self.classes else None)
            self.states[image] = state
        return self.states[image]

    @serialised
    def objects(self, image: str) -> ObjectList:
        """Objects of an item plus whether undo/redo are possible."""
        state = self.state(image)
        return ObjectList(image, state.objects(), bool(state.undo_stack), bool(state.redo_stack))

    @serialised
    def labels_image(self, image: str) -> np.ndarray:
        """A 2D item's instance label map (volumes: one view at a time, ``view_labels``)."""
        return self.item(image).labels_image(self.state(image)).copy()

    @serialised
    def view_labels(self, image: str, axis: int, slice_index: int | None) -> np.ndarray:
        """Object ids on one view of a volume."""
        volume = self.item(image).as_volume("no volume views")
        return volume.view_labels(self.state(image), axis, slice_index).copy()

    # --- the model -----------------------------------------------------------------------------------
    def embedding(self, image: str, axis: int = 0, slice_index: int | None = None) -> Future:
        """The embedding of a view, started when new (a future)."""
        return self.segmenter.embedding(*self.view(image, axis, slice_index))

    def open(self, image: str, axis: int = 0, slice_index: int | None = None, wait: bool = True) -> Opened:
        """Start (or finish, with ``wait``) the embedding of a view; the person's position is saved."""
        t0 = time.perf_counter()
        future = self.embedding(image, axis, slice_index)
        if wait:
            future.result()
            if self.current != image:
                self.current = image
                self.files.save_session(image)
        return Opened(image, future.done(), round(time.perf_counter() - t0, 4))

    def _view_of(self, key: ViewKey, pixels: np.ndarray, window: Window) -> tuple[tuple, np.ndarray]:
        """The segmenter's key and the pixels of a model view (the view itself for the whole image)."""
        if tuple(window) == whole_window(pixels.shape[:2]):
            return key, pixels
        return (*key, tuple(window)), window_of(pixels, window)

    def predict(self, image: str, axis: int, slice_index: int | None, box, points, multimask: bool,
                mask_from: int | None = None, client: str = ANONYMOUS) -> Predicted:
        """Masks for a box and/or clicks (x, y, 1|0) on a view for one client, answered on the object's model
        view (``Item.model_view``) and returned in full-image coordinates (``Segmenter.answer``)."""
        key, pixels = self.view(image, axis, slice_index)
        pts = np.asarray(points or [], dtype=np.float32).reshape(-1, 3)
        prompt = Prompt(box=box, points=pts[:, :2], labels=pts[:, 2].astype(np.int32))
        if not np.isfinite(pts).all() or (prompt.box is not None and not np.isfinite(prompt.box).all()):
            raise InputError(f"image {image!r}: box and points must be finite numbers (no NaN / Infinity)")
        t0 = time.perf_counter()
        session = self.prompts.get(client, key) or PromptSession(time.time())
        window = session.kept_window(prompt) or self.item(image).model_view(
            prompt, pixels.shape[:2], self.view_rule, self.segmenter.input_size)
        view_key, view_pixels = self._view_of(key, pixels, window)
        view_answer = self.segmenter.answer(view_key, view_pixels, prompt_in_view(prompt, window), multimask,
                                            mask_from, session.memory)
        answer = dataclasses.replace(view_answer, prompt=prompt,
                                     masks=paste(view_answer.masks, window, pixels.shape[:2]))
        if view_key != key and self.cfg.prefetch and image not in self._prefetched:
            # the image's objects are small: embed its other grid tiles after this answer (views.view_tiles)
            self._prefetched.add(image)
            self.segmenter.prefetch([(f"{image}{list(w)}", window_of(pixels, w))
                                     for w in view_tiles(pixels.shape[:2], self.segmenter.input_size) if w != window])
        session.clicks = len(prompt.points) + (prompt.box is not None)
        session.answer, session.view_answer, session.window = answer, view_answer, window
        session.box = None if prompt.box is None else tuple(prompt.box.tolist())
        self.prompts.put(client, key, session)
        suggestion = self.suggest_class(view_key, view_pixels, view_answer)
        return Predicted(answer, round(time.perf_counter() - t0, 4), suggestion)

    def suggest_class(self, key: ViewKey, pixels: np.ndarray, answer: Answer) -> ClassSuggestion | None:
        """The class head's most likely class for an answer's prompt, with its probability."""
        probs = self.segmenter.class_probabilities(key, pixels, answer.prompt)
        if probs is None:
            return None
        names = self.segmenter.class_names
        k = int(np.argmax(probs))
        return ClassSuggestion(names[k], round(float(probs[k]), 4),
                               {n: round(float(p), 4) for n, p in zip(names, probs)})

    def clear(self, image: str, axis: int = 0, slice_index: int | None = None, client: str = ANONYMOUS) -> None:
        """Forget a client's current prompts on a view (Esc)."""
        key, _ = self.view(image, axis, slice_index)
        self.prompts.pop(client, key)

    def candidate_of(self, client: str, key: ViewKey, candidate: int | None,
                     missing: str) -> tuple[PromptSession, Answer, int]:
        """A client's prompt session on a view, its last answer and the chosen candidate (default: the best
        predicted IoU); ``missing`` is the error when the client has no answer there."""
        session = self.prompts.get(client, key)
        if session is None or session.answer is None:
            raise InputError(missing)
        answer = session.answer
        index = answer.best() if candidate is None else int(candidate)
        if not 0 <= index < len(answer.masks):
            raise InputError(f"candidate {index} does not exist (0..{len(answer.masks) - 1})")
        return session, answer, index

    # --- changes (each saved at once) ----------------------------------------------------------------
    def save(self, image: str) -> ObjectList:
        """Write ``image``'s annotation and return its object list; call with ``lock`` held."""
        origin = self.source.origins.get(image, self.source_record)
        self.item(image).write_annotation(self.files, self.state(image), self.classes, origin)
        return self.objects(image)

    def _check_class(self, name: str | None) -> str | None:
        if name is not None and self.classes and name not in self.classes:
            raise InputError(f"unknown class {name!r}; classes: {', '.join(self.classes)}")
        return name

    @serialised
    def commit(self, image: str, axis: int, slice_index: int | None, candidate: int | None,
               class_name: str | None, client: str = ANONYMOUS) -> Changed:
        """The client's current answer's candidate becomes a new object (class: given, else suggested, else
        first)."""
        key, pixels = self.view(image, axis, slice_index)
        session, answer, index = self.candidate_of(client, key, candidate, "nothing to commit: prompt the model first")
        window = session.window or whole_window(pixels.shape[:2])
        suggestion = self.suggest_class(*self._view_of(key, pixels, window), session.view_answer or answer)
        chosen = self._check_class(class_name)
        if chosen is None:
            suggested = suggestion.name if suggestion else None
            usable = suggested is not None and (not self.classes or suggested in self.classes)
            chosen = suggested if usable else (self.classes[0] if self.classes else None)
        record = {"class": chosen, **answer_record(session, answer, index, self.segmenter.identity),
                  "axis": axis, "slice": slice_index, "view": list(window)}
        if suggestion is not None:
            record["suggested_class"] = suggestion.name
            record["suggested_probability"] = suggestion.probability
        committed = self.state(image).commit(answer.masks[index], record)
        self.item(image).note_commit(answer.masks[index], self.view_rule)
        self.clear(image, axis, slice_index, client)
        return Changed(self.save(image), record=committed)

    @serialised
    def replace_labels(self, image: str, label: np.ndarray, records: dict[int, dict]) -> ObjectList:
        """A whole label map from outside (a MONAI Label client's saved label) becomes the item's objects, one
        per value with ``records[value]``, replacing what was there; saved at once."""
        state = self.state(image)
        if tuple(label.shape) != tuple(state.label.shape):
            raise InputError(f"label shape {tuple(label.shape)} does not match image {image!r} "
                             f"{tuple(state.label.shape)}")
        self.states[image] = type(state).from_label_map(label, records, source="client label")
        return self.save(image)

    @serialised
    def delete(self, image: str, object_id: int) -> ObjectList:
        """Delete an object."""
        self.state(image).delete(object_id)
        return self.save(image)

    @serialised
    def update(self, image: str, object_id: int, class_name: str | None = None,
               hidden: bool | None = None) -> ObjectList:
        """Rename an object's class and/or hide or show it."""
        fields: dict = {}
        if class_name is not None:
            fields["class"] = self._check_class(class_name)
        if hidden is not None:
            fields["hidden"] = bool(hidden)
        self.state(image).update(object_id, **fields)
        return self.save(image)

    @serialised
    def undo(self, image: str) -> Changed:
        """Undo the item's last change (``step``: its kind, None when there was none)."""
        change = self.state(image).undo()
        return Changed(self.save(image), step=None if change is None else change.kind)

    @serialised
    def redo(self, image: str) -> Changed:
        """Redo the item's last undone change."""
        change = self.state(image).redo()
        return Changed(self.save(image), step=None if change is None else change.kind)

    # --- everything mode -----------------------------------------------------------------------------
    def everything(self, image: str, axis: int = 0, slice_index: int | None = None,
                   client: str = ANONYMOUS) -> Proposals:
        """Everything-mode proposals for a view, kept for the client until accepted or rejected."""
        key, pixels = self.view(image, axis, slice_index)
        t0 = time.perf_counter()
        records = self.segmenter.everything(pixels)
        self.proposals.put(client, key, list(records))
        return Proposals(image, records, round(time.perf_counter() - t0, 3))

    @serialised
    def accept(self, image: str, axis: int, slice_index: int | None, indices: list[int] | None,
               class_name: str | None, client: str = ANONYMOUS) -> Changed:
        """Commit proposals (``indices``, or every one left when None) as objects, one change each."""
        key, pixels = self.view(image, axis, slice_index)
        left = self.proposals.get(client, key) or []
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
                record = {"class": cls, **proposal_record(rec, self.segmenter.identity), "axis": axis,
                          "slice": slice_index}
                accepted.append(state.commit(mask, record)["id"])
            left[int(i)] = None
        return Changed(self.save(image), accepted=accepted)

    def reject(self, image: str, axis: int, slice_index: int | None, indices: list[int] | None,
               client: str = ANONYMOUS) -> int:
        """Drop a client's proposals (``indices``, or all when None); how many are left."""
        key, _ = self.view(image, axis, slice_index)
        left = self.proposals.get(client, key) or []
        for i in range(len(left)) if indices is None else indices:
            if 0 <= int(i) < len(left):
                left[int(i)] = None
        return sum(r is not None for r in left)

    # --- learning and the end ------------------------------------------------------------------------
    def start_learning(self, settings: LearnSettings | None = None) -> LearnController:
        """Learn rounds on this session's annotations, its model the host (``--learn`` settings by default)."""
        cfg = self.cfg
        settings = settings or LearnSettings(auto=cfg.learn, min_objects=cfg.learn_min_objects,
                                             budget=cfg.learn_budget)
        self.learning = LearnController(self.segmenter, self.files.out, self.launch, settings)
        return self.learning

    def close(self) -> None:
        """Stop learn rounds and the model's compute thread."""
        if self.learning is not None:
            self.learning.close()
        self.segmenter.close()
