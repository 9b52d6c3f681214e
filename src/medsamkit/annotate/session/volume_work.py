"""The session's volume operations (a mixin of ``Workspace``): propagation runs, corrected views, and the 3D
engine's box and clicks (``annotate.model.engine3d``). Each is one undoable change, saved at once."""

from __future__ import annotations

from medsamkit.annotate.model.propagation import PropagationSettings
from medsamkit.annotate.session.locking import serialised
from medsamkit.annotate.session.prompting import ANONYMOUS
from medsamkit.annotate.session.records import answer_record, engine_record, run_record
from medsamkit.annotate.session.results import Changed, Engined, Propagated
from medsamkit.annotate.session.volumes import VolumeItem
from medsamkit.core.errors import InputError
from medsamkit.volumes.engine import Box3D
from medsamkit.volumes.slices import SliceEmbedder


class VolumeWork:
    """Volume operations over the workspace's items, annotations, propagator and 3D engines."""

    def _views_key(self, volume: VolumeItem, axis: int) -> tuple:
        """What names a volume's views of one axis for the propagator's slice embedders (reloaded pixels: new)."""
        return (volume.id, axis, id(volume.loaded().image01))

    def _slice_embedder(self, volume: VolumeItem, axis: int) -> SliceEmbedder:
        """The slice embedder of a volume's axis, shared with propagation."""
        return self.propagator.embedder(self._views_key(volume, axis), volume.stack(axis), volume.three_slice)

    @serialised
    def propagate(self, image: str, object_id: int, axis: int, slice_index: int | None, direction: str = "both",
                  min_iou: float = 0.0, min_area: int = 20, margin: float = 0.0) -> Propagated:
        """Propagate an object from its mask on view (axis, slice) (``annotate.model.propagation``); the run
        is one undoable change, logged in the object's record."""
        settings = PropagationSettings(direction, min_iou, min_area, margin).check()
        volume = self.item(image).as_volume("propagation needs a volume")
        axis, k = volume.check_view(axis, slice_index)
        state = self.state(image)
        views = state.view_records(object_id, axis)
        start = state.view_mask(object_id, axis, k)
        if not start.any():
            raise InputError(f"object {object_id} has no pixels on slice {k} (axis {axis}): commit or correct "
                             "it there first")
        corrected = {z for z, v in views.items() if v.get("source") == "person"} - {k}
        painted = {z for z, v in views.items() if v.get("source") == "propagated"}
        run = self.segmenter.run(self.propagator.run, self._views_key(volume, axis), volume.stack(axis),
                                 volume.three_slice, start, k, corrected, painted, settings)
        state.paint_views(object_id, axis, run.masks, run.entries,
                          run_record(axis, k, settings, run, self.segmenter.identity))
        return Propagated(self.save(image), object_id, axis, k, run)

    @serialised
    def box3d(self, image: str, axis: int, box: Box3D, class_name: str | None, client: str = ANONYMOUS) -> Engined:
        """A new object from a 3D box on the views of ``axis`` (``annotate.model.engine3d``): one undoable change;
        the client's clicks on the object then go to the same engine."""
        volume = self.item(image).as_volume("a 3D box needs a volume")
        axis, _ = volume.check_view(axis, box.z)
        chosen = self._check_class(class_name) or (self.classes[0] if self.classes else None)
        engine, run = self.segmenter.run(self.engines3d.start, self._slice_embedder(volume, axis), box, image)
        where = {"box3d": [box.z_min, box.z_max, box.z, *box.box]}
        record = {"class": chosen, "prompt": where, "axis": axis, "slice": box.z,
                  "propagations": [engine_record("box3d", axis, run, self.segmenter.identity, **where)]}
        committed = self.state(image).commit_views(run.masks, run.entries, record)
        self.engines3d.bind((client, image, committed["id"], axis), engine)
        return Engined(self.save(image), committed["id"], axis, run)

    @serialised
    def click3d(self, image: str, object_id: int, axis: int, slice_index: int | None, x: float, y: float,
                positive: bool, client: str = ANONYMOUS) -> Engined:
        """A click on one view of an object corrects the view and re-propagates from it with the 3D engine; the
        views it changed are one undoable change."""
        volume = self.item(image).as_volume("3D clicks need a volume")
        axis, k = volume.check_view(axis, slice_index)
        stack = volume.stack(axis)
        if not (0 <= x < stack.shape[2] and 0 <= y < stack.shape[1]):
            raise InputError(f"click ({x}, {y}) is outside view {k} of {image!r} ({stack.shape[2]} x {stack.shape[1]})")
        state = self.state(image)
        state.record_of(object_id)
        anchors = {z for z, v in state.view_records(object_id, axis).items() if v.get("source") == "person"}
        run = self.segmenter.run(self.engines3d.click, (client, image, object_id, axis),
                                 self._slice_embedder(volume, axis), state.object_stack(object_id, axis), anchors, k,
                                 int(y), int(x), positive)
        where = {"slice": k, "click": [float(x), float(y), int(bool(positive))]}
        state.paint_views(object_id, axis, run.masks, run.entries,
                          engine_record("click", axis, run, self.segmenter.identity, **where))
        return Engined(self.save(image), object_id, axis, run)

    @serialised
    def correct(self, image: str, object_id: int, axis: int, slice_index: int | None, candidate: int | None,
                client: str = ANONYMOUS) -> Changed:
        """The client's current answer on a view replaces an object's pixels there (the view counts as
        corrected: propagation never overwrites it)."""
        volume = self.item(image).as_volume("correct an object by deleting and committing it")
        axis, k = volume.check_view(axis, slice_index)
        key = (image, axis, k)
        session, answer, index = self.candidate_of(
            client, key, candidate, "nothing to correct with: prompt the model on this slice first")
        state = self.state(image)
        state.record_of(object_id)
        state.correct_view(object_id, axis, k, answer.masks[index],
                           answer_record(session, answer, index, self.segmenter.identity))
        self.clear(image, axis, k, client)
        return Changed(self.save(image), view=(object_id, axis, k))
