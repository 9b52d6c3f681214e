"""One image's or volume's annotation: an instance label map (later objects painted on top) plus each
object's record, with undo/redo of every change (commit, delete, rename, hide, a volume's per-slice
correction and propagation).

For a volume the map is (Z, Y, X) and an object is a 3D label: a 2D mask is placed on a view (axis, slice;
``annotate.volume_source``), and each object's record keeps per view what made it (``"slices"``: the
person's prompts, or propagation).

The label map IS the state: what is saved is exactly what is shown, so reopening resumes exactly. Each
change keeps only the pixels it touched (flat indices and their previous values), not a copy of the map.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from medsamkit.annotate.volume_source import view_stack, view_voxels
from medsamkit.core.errors import InputError

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

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> ImageAnnotation:
        """No objects yet (``shape`` (H, W) of an image or (Z, Y, X) of a volume)."""
        return cls(np.zeros(tuple(shape) if len(shape) == 3 else tuple(shape[:2]), dtype=np.uint16))

    @classmethod
    def from_label_map(cls, label: np.ndarray, records: dict[int, dict] | None = None,
                       default_class: str | None = None, source: str = "labels") -> ImageAnnotation:
        """Editable objects from an instance label map (ids kept; above 65535 they are renumbered)."""
        arr = np.asarray(label)
        if arr.ndim not in (2, 3):
            raise InputError(f"{source}: label map must be 2D or 3D, got shape {arr.shape}")
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
    def restore(cls, label: np.ndarray, records: dict[int, dict], source: str) -> ImageAnnotation:
        """A saved annotation: its label map's objects with their records, and the records of objects painted
        over completely (no pixels left, area 0), so their history and ids survive a reopening."""
        state = cls.from_label_map(label, records, source=source)
        for oid, rec in records.items():
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
        """Paint ``mask`` as a new object on top of the others; returns its record.

        On a volume ``mask`` is one view's mask, placed by ``record["axis"]`` and ``record["slice"]``.
        """
        mask = np.asarray(mask, dtype=bool)
        if self.label.ndim == 3:
            return self.commit_view(mask, record)
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

    # --- volumes: objects painted view by view ---------------------------------------------------------
    def _view_change(self, kind: str, object_id: int, axis: int, masks: dict[int, np.ndarray],
                     after_record: dict) -> Change:
        """The change that makes ``object_id`` exactly ``masks[k]`` on each view (axis, k), painted on top."""
        pixels, before, after = [], [], []
        flat = self.label.ravel()
        for k, mask in masks.items():
            rows, cols = np.indices(mask.shape).reshape(2, -1)
            voxels = view_voxels(self.label.shape, axis, int(k), rows, cols)
            old = flat[voxels]
            new = np.where(old == object_id, 0, old).astype(np.uint16)
            new[mask.ravel()] = object_id
            changed = old != new
            pixels.append(voxels[changed])
            before.append(old[changed])
            after.append(new[changed])
        cat = np.concatenate
        return Change(kind, object_id, cat(pixels) if pixels else np.zeros(0, np.int64),
                      cat(before) if before else np.zeros(0, np.uint16),
                      cat(after) if after else np.zeros(0, np.uint16),
                      copy.deepcopy(self.records.get(object_id)), after_record)

    def commit_view(self, mask: np.ndarray, record: dict) -> dict:
        """A new 3D object from one view's mask (``record`` names the axis and slice)."""
        if not mask.any():
            raise InputError("the mask is empty: nothing to commit")
        axis, k = int(record["axis"]), int(record["slice"])
        oid = self.next_id
        first = {key: record[key] for key in ("prompt", "candidate", "predicted_iou", "clicks", "seconds")
                 if key in record}
        rec = {**record, "id": oid, "hidden": False, "area": int(mask.sum()),
               "slices": {f"{axis}:{k}": {**first, "source": "person", "area": int(mask.sum())}},
               "propagations": []}
        return self._do(self._view_change("commit", oid, axis, {k: mask}, rec))

    def correct_view(self, object_id: int, axis: int, k: int, mask: np.ndarray, slice_record: dict) -> dict:
        """Replace an object's pixels on one view by the person's mask; the view counts as corrected."""
        rec = copy.deepcopy(self.record_of(object_id))
        rec.setdefault("slices", {})[f"{axis}:{k}"] = {**slice_record, "source": "person",
                                                       "area": int(mask.sum())}
        return self._do(self._view_change("correct", object_id, axis, {k: np.asarray(mask, bool)}, rec))

    def paint_views(self, object_id: int, axis: int, masks: dict[int, np.ndarray], slice_records: dict,
                    run: dict) -> dict:
        """One propagation run as one undoable change: the object becomes ``masks[k]`` on each view."""
        rec = copy.deepcopy(self.record_of(object_id))
        slices = rec.setdefault("slices", {})
        for k, entry in slice_records.items():
            slices[f"{axis}:{k}"] = entry
        rec.setdefault("propagations", []).append(run)
        return self._do(self._view_change("propagate", object_id, axis, masks, rec))

    def view_mask(self, object_id: int, axis: int, k: int) -> np.ndarray:
        """Bool mask of an object on one view."""
        return view_stack(self.label, axis)[k] == object_id

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
        """(H, W) class index map (1 = first of ``classes``), or None when no object has a listed class."""
        lookup = np.zeros(max(self.records, default=0) + 1, dtype=np.uint16)
        for oid, rec in self.records.items():
            if rec.get("class") in classes:
                lookup[oid] = classes.index(rec["class"]) + 1
        if not lookup.any():
            return None
        return lookup[self.label]
