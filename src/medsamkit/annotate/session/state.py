"""One image's or volume's annotation: an instance label map (later objects painted on top) plus each
object's record, with undo/redo of every change (commit, delete, rename, hide, a volume's per-view correction
and propagation).

``ImageAnnotation`` is a 2D map; ``VolumeAnnotation`` is the same with a (Z, Y, X) map, where a 2D mask is
placed on a view (axis, slice; ``annotate.session.geometry``) and each object's record keeps per view what made
it (``"slices"``: the person's prompts, or propagation). The two differ in how a mask is placed, nowhere else.

The label map IS the state: what is saved is exactly what is shown, so reopening resumes exactly. Each
change keeps only the pixels it touched (flat indices and their previous values), not a copy of the map.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from medsamkit.annotate.session.geometry import view_stack, view_voxels
from medsamkit.core.errors import InputError
from medsamkit.io.annotations import SavedAnnotation

MAX_OBJECTS = 65535  # the instance PNG is uint16


@dataclass
class Change:
    """One undoable change: pixels (flat indices) with their values before and after, records before/after."""

    kind: str
    object_id: int
    pixels: np.ndarray
    before_values: np.ndarray
    after_values: np.ndarray
    before_record: dict | None
    after_record: dict | None


@dataclass
class ImageAnnotation:
    """Objects of one image: ``label`` (H, W) uint16 instance ids and ``records[id]`` (class, prompts, ...)."""

    label: np.ndarray
    records: dict[int, dict] = field(default_factory=dict)
    undo_stack: list[Change] = field(default_factory=list)
    redo_stack: list[Change] = field(default_factory=list)
    ndim: ClassVar[int] = 2

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> ImageAnnotation:
        """No objects yet on a map of ``shape``."""
        return cls(np.zeros(tuple(shape)[: cls.ndim], dtype=np.uint16))

    @classmethod
    def from_label_map(cls, label: np.ndarray, records: dict[int, dict] | None = None,
                       default_class: str | None = None, source: str = "labels") -> ImageAnnotation:
        """Editable objects from an instance label map (ids kept; above 65535 they are renumbered)."""
        arr = np.asarray(label)
        if arr.ndim != cls.ndim:
            raise InputError(f"{source}: label map must be {cls.ndim}D, got shape {arr.shape}")
        values = np.unique(arr)
        values = values[values != 0]
        if values.size and (values.min() < 0 or values.max() > MAX_OBJECTS):
            if values.size > MAX_OBJECTS:
                raise InputError(f"{source}: more than {MAX_OBJECTS} objects")
            arr = np.searchsorted(values, arr) + (arr != 0)
            arr[label == 0] = 0
            values = np.arange(1, values.size + 1)
        state = cls(arr.astype(np.uint16))
        areas = np.bincount(state.label.ravel(), minlength=int(values.max(initial=0)) + 1)
        for v in values.tolist():
            rec = dict((records or {}).get(v) or {"class": default_class, "source": source, "prompts": []})
            rec.update(id=v, area=int(areas[v]))
            rec.setdefault("hidden", False)
            state.records[v] = rec
        return state

    @classmethod
    def start(cls, label: np.ndarray | None, shape: tuple[int, ...], default_class: str | None,
              source: str) -> ImageAnnotation:
        """The objects an item starts with: its shipped label map's (``source`` names it), else none."""
        if label is None:
            return cls.empty(shape)
        return cls.from_label_map(label, default_class=default_class, source=source)

    @classmethod
    def restore(cls, saved: SavedAnnotation | None, source: str) -> ImageAnnotation | None:
        """A saved annotation (None: nothing saved): its label map's objects with their records, and the records
        of objects painted over completely (no pixels left, area 0), so their history and ids survive."""
        if saved is None:
            return None
        state = cls.from_label_map(saved.label, saved.records, source=source)
        for oid, rec in saved.records.items():
            if oid not in state.records:
                state.records[oid] = {**rec, "area": 0}
        return state

    @property
    def next_id(self) -> int:
        """The id a new object gets."""
        top = max(self.records, default=0)
        if top >= MAX_OBJECTS:
            raise InputError(f"an image holds at most {MAX_OBJECTS} objects")
        return top + 1

    def objects(self) -> list[dict]:
        """Records in id order (what the API lists)."""
        return [self.records[k] for k in sorted(self.records)]

    def _apply(self, change: Change, forward: bool) -> None:
        values = change.after_values if forward else change.before_values
        self.label.ravel()[change.pixels] = values
        record = change.after_record if forward else change.before_record
        if record is None:
            self.records.pop(change.object_id, None)
        else:
            self.records[change.object_id] = copy.deepcopy(record)
        self._refresh_areas(change)

    def _refresh_areas(self, change: Change) -> None:
        touched = set(np.unique(change.before_values).tolist()) | set(np.unique(change.after_values).tolist())
        for oid in touched - {0}:
            if oid in self.records:
                self.records[oid]["area"] = int((self.label == oid).sum())

    def _do(self, change: Change) -> dict | None:
        self._apply(change, True)
        self.undo_stack.append(change)
        self.redo_stack.clear()
        return copy.deepcopy(self.records.get(change.object_id))

    def commit(self, mask: np.ndarray, record: dict) -> dict:
        """Paint ``mask`` as a new object on top of the others; returns its record."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.label.shape:
            raise InputError(f"mask shape {mask.shape} does not match the image {self.label.shape}")
        if not mask.any():
            raise InputError("the mask is empty: nothing to commit")
        oid = self.next_id
        pixels = np.flatnonzero(mask)
        before = self.label.ravel()[pixels].copy()
        rec = {**record, "id": oid, "hidden": False, "area": int(pixels.size)}
        change = Change("commit", oid, pixels, before, np.full(pixels.size, oid, np.uint16), None, rec)
        return self._do(change)

    def record_of(self, object_id: int) -> dict:
        """The record of an object; KeyError when there is none."""
        if object_id not in self.records:
            raise KeyError(object_id)
        return self.records[object_id]

    def delete(self, object_id: int) -> None:
        """Remove an object (its pixels become background)."""
        before_record = copy.deepcopy(self.record_of(object_id))
        pixels = np.flatnonzero(self.label == object_id)
        change = Change("delete", object_id, pixels, np.full(pixels.size, object_id, np.uint16),
                        np.zeros(pixels.size, np.uint16), before_record, None)
        self._do(change)

    def update(self, object_id: int, **fields: object) -> dict:
        """Change an object's class or hidden flag (undoable)."""
        before_record = copy.deepcopy(self.record_of(object_id))
        after = {**before_record, **fields}
        none = np.zeros(0, np.int64)
        return self._do(Change("update", object_id, none, none.astype(np.uint16), none.astype(np.uint16),
                               before_record, after))

    def undo(self) -> Change | None:
        """Revert the last change; None when there is nothing to undo."""
        if not self.undo_stack:
            return None
        change = self.undo_stack.pop()
        self._apply(change, False)
        self.redo_stack.append(change)
        return change

    def redo(self) -> Change | None:
        """Re-apply the last undone change; None when there is nothing to redo."""
        if not self.redo_stack:
            return None
        change = self.redo_stack.pop()
        self._apply(change, True)
        self.undo_stack.append(change)
        return change

    def class_map(self, classes: list[str]) -> np.ndarray | None:
        """Class index map (1 = first of ``classes``), or None when no object has a listed class."""
        lookup = np.zeros(max(self.records, default=0) + 1, dtype=np.uint16)
        for oid, rec in self.records.items():
            if rec.get("class") in classes:
                lookup[oid] = classes.index(rec["class"]) + 1
        if not lookup.any():
            return None
        return lookup[self.label]


class VolumeAnnotation(ImageAnnotation):
    """Objects of one volume: ``label`` (Z, Y, X); masks are placed view by view (axis, slice)."""

    ndim: ClassVar[int] = 3

    def commit(self, mask: np.ndarray, record: dict) -> dict:
        """A new 3D object from one view's mask (``record["axis"]`` and ``record["slice"]`` name the view)."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            raise InputError("the mask is empty: nothing to commit")
        first = {key: record[key] for key in ("prompt", "candidate", "predicted_iou", "clicks", "seconds")
                 if key in record}
        k = int(record["slice"])
        return self.commit_views({k: mask}, {k: {**first, "source": "person", "area": int(mask.sum())}}, record)

    def commit_views(self, masks: dict[int, np.ndarray], slice_records: dict[int, dict], record: dict) -> dict:
        """A new 3D object made of several views' masks of ``record["axis"]`` at once (one undoable change)."""
        axis = int(record["axis"])
        masks = {int(k): np.asarray(m, dtype=bool) for k, m in masks.items()}
        oid = self.next_id
        rec = {**record, "id": oid, "hidden": False, "area": int(sum(m.sum() for m in masks.values())),
               "slices": {f"{axis}:{k}": entry for k, entry in slice_records.items()},
               "propagations": list(record.get("propagations", []))}
        return self._do(self._view_change("commit", oid, axis, masks, rec))

    def object_stack(self, object_id: int, axis: int) -> np.ndarray:
        """Bool mask of an object on every view of ``axis`` (views, rows, columns)."""
        return view_stack(self.label, axis) == object_id

    def _view_change(self, kind: str, object_id: int, axis: int, masks: dict[int, np.ndarray],
                     after_record: dict, pinned: dict[int, np.ndarray] | None = None) -> Change:
        """The change that makes ``object_id`` exactly ``masks[k]`` on each view (axis, k), painted on top;
        voxels on a ``pinned`` view (axis -> view indices) keep their label."""
        pixels, before, after = [], [], []
        flat = self.label.ravel()
        for k, mask in masks.items():
            rows, cols = np.indices(mask.shape).reshape(2, -1)
            voxels = view_voxels(self.label.shape, axis, int(k), rows, cols)
            old = flat[voxels]
            new = np.where(old == object_id, 0, old).astype(np.uint16)
            new[mask.ravel()] = object_id
            if pinned:
                coords = np.unravel_index(voxels, self.label.shape)
                keep = np.zeros(len(voxels), dtype=bool)
                for a, views in pinned.items():
                    keep |= np.isin(coords[a], views)
                new[keep] = old[keep]
            changed = old != new
            pixels.append(voxels[changed])
            before.append(old[changed])
            after.append(new[changed])
        cat = np.concatenate
        return Change(kind, object_id, cat(pixels) if pixels else np.zeros(0, np.int64),
                      cat(before) if before else np.zeros(0, np.uint16),
                      cat(after) if after else np.zeros(0, np.uint16),
                      copy.deepcopy(self.records.get(object_id)), after_record)

    def correct_view(self, object_id: int, axis: int, k: int, mask: np.ndarray, slice_record: dict) -> dict:
        """Replace an object's pixels on one view by the person's mask; the view counts as corrected."""
        rec = copy.deepcopy(self.record_of(object_id))
        rec.setdefault("slices", {})[f"{axis}:{k}"] = {**slice_record, "source": "person",
                                                       "area": int(mask.sum())}
        return self._do(self._view_change("correct", object_id, axis, {k: np.asarray(mask, bool)}, rec))

    def paint_views(self, object_id: int, axis: int, masks: dict[int, np.ndarray], slice_records: dict,
                    run: dict) -> dict:
        """One propagation run as one undoable change: the object becomes ``masks[k]`` on each view, except on
        the voxels of views a person corrected on another axis (they keep what the person made)."""
        rec = copy.deepcopy(self.record_of(object_id))
        pinned = self._person_views(rec, axis)
        slices = rec.setdefault("slices", {})
        for k, entry in slice_records.items():
            slices[f"{axis}:{k}"] = entry
        rec.setdefault("propagations", []).append(run)
        return self._do(self._view_change("propagate", object_id, axis, masks, rec, pinned))

    def _person_views(self, record: dict, axis: int) -> dict[int, np.ndarray]:
        """An object's person-made views on the axes other than ``axis``: axis -> view indices (no volume is
        allocated: a run on a large CT checks only the voxels it paints)."""
        pinned: dict[int, list[int]] = {}
        for key, v in (record.get("slices") or {}).items():
            a, k = (int(x) for x in key.split(":"))
            if v.get("source") == "person" and a != axis:
                pinned.setdefault(a, []).append(k)
        return {a: np.asarray(ks) for a, ks in pinned.items()}

    def view_mask(self, object_id: int, axis: int, k: int) -> np.ndarray:
        """Bool mask of an object on one view."""
        return view_stack(self.label, axis)[k] == object_id

    def view_records(self, object_id: int, axis: int) -> dict[int, dict]:
        """An object's per-view entries on ``axis`` (slice -> what made it)."""
        prefix = f"{axis}:"
        slices = self.record_of(object_id).get("slices") or {}
        return {int(k[len(prefix):]): v for k, v in slices.items() if k.startswith(prefix)}

    def segments(self, classes: list[str], input_names: dict[int, str]) -> list[tuple[str, np.ndarray]]:
        """(label, bool mask) per class with objects (a DICOM SEG's segments); per object when no object has a
        class, named by the input's ROI / label name for objects that came from the input's label file."""
        with_class = [r for r in self.records.values() if r.get("class") is not None and r.get("area", 0) > 0]
        if classes and with_class:
            out = []
            for name in classes:
                ids = [oid for oid, r in self.records.items() if r.get("class") == name]
                if ids:
                    mask = np.isin(self.label, ids)
                    if mask.any():
                        out.append((name, mask))
            return out

        def name(oid: int) -> str:
            from_input = str(self.records[oid].get("source", "")).endswith("labels") and oid in input_names
            return input_names[oid] if from_input else f"object {oid}"

        return [(name(oid), self.label == oid) for oid in sorted(self.records) if self.records[oid].get("area", 0) > 0]
