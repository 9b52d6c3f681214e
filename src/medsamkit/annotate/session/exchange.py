"""What outside annotation clients ask of a session (MONAI Label's protocol: 3D Slicer, OHIF, QuPath; its HTTP
side is ``annotate.http.monailabel``), over the same ``Workspace``: images a client uploads join the items,
a click or box answer comes back as a whole label map in the item's own space and file format (a volume's
NIfTI on its grid, a 2D image's PNG), a label map sent back becomes the item's objects in the annotation
folder, the datastore's counts, the next image to label.

Coordinates are the clients' voxel indices: a 2D image's (x, y), a volume's NIfTI (i, j, k) = our (x, y,
slice along axis 0) (``io.volume``: ``array[z, y, x]`` is the NIfTI data transposed). A box ("roi") is
[x0, x1, y0, y1(, z0, z1)] with the corners in any order.
"""

from __future__ import annotations

import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsamkit.annotate.session.prompting import PromptSession
from medsamkit.annotate.session.results import ObjectList
from medsamkit.annotate.session.workspace import Workspace
from medsamkit.core.errors import InputError
from medsamkit.io.images import png_bytes

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
STRATEGIES = {"random": "a random image without a saved label",
              "first": "the first image (in list order) without a saved label"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class ClientFile:
    """A file for a client: its bytes and name (the suffix tells the format)."""

    data: bytes
    name: str


@dataclass
class ClientAnswer:
    """A prompt's answer as a whole label map (1 inside) on the item's grid, the view it was answered on,
    and the prompt as the model saw it (points [x, y, 1|0], box [x0, y0, x1, y1])."""

    label: np.ndarray
    slice: int | None
    points: list[list[float]]
    box: list[float] | None
    iou: float
    seconds: float


def suffix_of(name: str) -> str:
    """A file name's image suffix (``.nii.gz`` counts as one); '' when it is none we read."""
    lower = name.lower()
    return next((s for s in VOLUME_SUFFIXES + IMAGE_SUFFIXES if lower.endswith(s)), "")


def client_id(name: str) -> str:
    """The item id a client's image name maps to: its file suffix dropped, other characters made safe."""
    stem = name[: len(name) - len(suffix_of(name))] if suffix_of(name) else name
    return _UNSAFE.sub("_", stem).strip("_") or "image"


def roi_box(roi: list[float]) -> list[float]:
    """[x0, x1, y0, y1, ...] (MONAI Label's roi) as a box [x0, y0, x1, y1] with ordered corners."""
    if len(roi) < 4 or len(roi) % 2:
        raise InputError(f"roi must be [x0, x1, y0, y1(, z0, z1)], got {len(roi)} numbers")
    x0, x1, y0, y1 = (float(v) for v in roi[:4])
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


class Exchange:
    """A session as outside clients see it (see the module docstring)."""

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace

    # --- images ------------------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """The item id of a client's image name (KeyError: a 404)."""
        items = self.ws.source.items
        if name in items:
            return name
        ident = client_id(name)
        if ident not in items:
            raise KeyError(name)
        return ident

    def upload(self, name: str, file_name: str, data: bytes) -> str:
        """Store an uploaded image under ``uploads/`` and add it to the items; its id (an existing id is kept
        only for the same bytes: embeddings and objects belong to the pixels)."""
        suffix = suffix_of(file_name) or suffix_of(name)
        if not suffix:
            raise InputError(f"{file_name or name}: not an image file ({', '.join(VOLUME_SUFFIXES + IMAGE_SUFFIXES)})")
        ident = client_id(name or file_name)
        ws = self.ws
        with ws.lock:
            if ident in ws.source.items:
                stored = [p for p in ws.files.upload_files() if p.name.split(".")[0] == ident]
                if stored and stored[0].read_bytes() == data:
                    return ident
                raise InputError(f"image {ident!r} exists already: upload under another name")
            path = ws.files.write_upload(ident + suffix, data)
            try:
                ws.source.add_uploaded(path, ident)
                ws.state(ident)  # reads it: a file that is not what its name says is refused now
            except Exception:
                ws.source.items.pop(ident, None)
                ws.states.pop(ident, None)
                path.unlink(missing_ok=True)
                raise
        return ident

    def image_file(self, image: str) -> ClientFile:
        """The image as a client reads it: a volume's raw intensities as NIfTI on its grid, a 2D image as PNG."""
        item = self.ws.item(image)
        if self._ndim(image) == 3:
            grid = item.as_volume("").grid
            return ClientFile(_nifti_bytes(grid.array, grid), f"{image}.nii.gz")
        pixels = np.asarray(item.view(0, None))
        if pixels.dtype != np.uint8:
            pixels = self.ws.display(image, 0, None, "minmax")
        return ClientFile(png_bytes(pixels), f"{image}.png")

    def _ndim(self, image: str) -> int:
        return self.ws.state(image).label.ndim

    # --- answers -----------------------------------------------------------------------------------------
    def answer(self, image: str, foreground: list, background: list, roi: list | None, slice_index: int | None,
               client: str, reset: bool = False) -> ClientAnswer:
        """The model's best answer to a client's clicks (and box) on one view, as a whole label map. The
        clicks the client sent before keep their order (each request repeats them all), so a new click
        continues the object as on the page (``Workspace.predict``)."""
        ws = self.ws
        volume = self._ndim(image) == 3
        try:
            k, points, box = _view_prompt(foreground, background, roi, slice_index, volume)
        except (TypeError, ValueError):
            raise InputError("params: foreground / background / roi / slice must be numbers") from None
        if not points and box is None:
            raise InputError("give foreground / background points or a roi")
        key = (image, 0, k)
        if reset:
            ws.clear(image, 0, k, client)
        points = _in_previous_order(points, ws.prompts.get(client, key))
        done = ws.predict(image, 0, k, box, points, False, None, client)
        best = done.answer.masks[done.answer.best()]
        label = np.zeros(ws.state(image).label.shape, dtype=np.uint8)
        if volume:
            label[k] = best
        else:
            label[...] = best
        return ClientAnswer(label, k, points, box, float(done.answer.iou[done.answer.best()]), done.seconds)

    def everything(self, image: str, slice_index: int | None, client: str) -> ClientAnswer:
        """Automatic segmentation: every object everything mode finds on a 2D image or one slice of a volume
        (``slice_index``), painted as 1 on a whole label map; they stay the client's proposals as on the page."""
        volume = self._ndim(image) == 3
        if volume and slice_index is None:
            raise InputError("automatic segmentation of a volume works slice by slice: give params 'slice'")
        try:
            k = int(round(float(slice_index))) if volume else None
        except (TypeError, ValueError):
            raise InputError("params: slice must be a number") from None
        found = self.ws.everything(image, 0, k, client)
        label = np.zeros(self.ws.state(image).label.shape, dtype=np.uint8)
        view = label[k] if volume else label
        for record in found.records:
            view[record.mask(view.shape)] = 1
        iou = float(np.mean([r.predicted_iou for r in found.records])) if found.records else 0.0
        return ClientAnswer(label, k, [], None, iou, found.seconds)

    def label_file(self, image: str, label: np.ndarray) -> ClientFile:
        """A label map of the item as a client reads it: NIfTI on a volume's grid, PNG for a 2D image."""
        if label.ndim == 3:
            return ClientFile(_nifti_bytes(label, self.ws.item(image).as_volume("").grid), f"{image}.nii.gz")
        return ClientFile(png_bytes(label.astype(np.uint8 if label.max(initial=0) < 256 else np.uint16)),
                          f"{image}.png")

    # --- saved labels --------------------------------------------------------------------------------------
    def save_label(self, image: str, data: bytes, file_name: str, names: dict[int, str], tag: str) -> ObjectList:
        """A client's label map becomes the item's objects (saved): each value of a volume is one object, each
        connected part of a value on a 2D image one object (instances); the class is the value's name where
        the session has it (``names``: value -> name from the client, else the session's classes in order)."""
        label = self._decode(image, data, file_name)
        classes = self.ws.classes
        if label.ndim == 2:
            label, values = _components(label)
        else:
            values = {int(v): int(v) for v in np.unique(label) if v}
        records = {}
        for oid, value in values.items():
            name = names.get(value) or (classes[value - 1] if 0 < value <= len(classes) else None)
            records[oid] = {"class": name if not classes or name in classes else None,
                            "source": "monailabel", "tag": tag, "value": value, "prompts": []}
        return self.ws.replace_labels(image, label, records)

    def _decode(self, image: str, data: bytes, file_name: str) -> np.ndarray:
        shape = self.ws.state(image).label.shape
        suffix = suffix_of(file_name) or (".nii.gz" if len(shape) == 3 else ".png")
        with tempfile.TemporaryDirectory(prefix="medsamkit-label-") as scratch:
            path = Path(scratch) / f"label{suffix}"
            path.write_bytes(data)
            if len(shape) == 3:
                from medsamkit.io.volume_reader import read_volume

                label = np.asarray(read_volume(path).array)
            else:
                from medsamkit.io.images import read_label

                label = read_label(path)
        if tuple(label.shape) != tuple(shape):
            raise InputError(f"{file_name or 'label'}: shape {tuple(label.shape)} does not match image {image!r} "
                             f"{tuple(shape)}")
        if label.min(initial=0) < 0 or label.max(initial=0) > 65535:
            raise InputError(f"{file_name or 'label'}: label values must be 0..65535")
        return label.astype(np.int64)

    def saved_label(self, image: str) -> ClientFile:
        """The item's saved objects as one label map file (ids; KeyError when nothing is saved)."""
        if not self.ws.files.has_annotation(image):
            raise KeyError(f"label of {image}")
        with self.ws.lock:
            label = self.ws.state(image).label.copy()
        return self.label_file(image, label)

    # --- the datastore -------------------------------------------------------------------------------------
    def labelled(self) -> list[str]:
        """Ids of the items with a saved annotation."""
        return [i for i in self.ws.source.ids if self.ws.files.has_annotation(i)]

    def next_sample(self, strategy: str, rng: random.Random | None = None) -> str | None:
        """The next image to label by ``strategy`` (``STRATEGIES``); None when every image has a label."""
        if strategy not in STRATEGIES:
            raise KeyError(f"strategy {strategy}")
        done = set(self.labelled())
        left = [i for i in self.ws.source.ids if i not in done]
        if not left:
            return None
        return left[0] if strategy == "first" else (rng or random.Random()).choice(left)


def _view_prompt(foreground, background, roi, slice_index, volume: bool):
    """(slice, points [x, y, 1|0], box) of a client's prompt: clicks on other slices are left out."""
    clicks = [(p, 1) for p in foreground or []] + [(p, 0) for p in background or []]
    for p, _ in clicks:
        if not isinstance(p, (list, tuple)) or len(p) < 2 or (volume and len(p) < 3):
            raise InputError(f"a point must be [x, y{', z' if volume else ''}], got {str(p)[:40]}")
    k = None
    if volume:
        k = _slice_of(clicks, roi, slice_index)
        clicks = [(p, lab) for p, lab in clicks if round(float(p[2])) == k]
    points = [[float(p[0]), float(p[1]), float(lab)] for p, lab in clicks]
    return k, points, (roi_box(roi) if roi else None)


def _slice_of(clicks: list, roi: list | None, given: int | None) -> int:
    """The slice of a volume prompt: ``given`` (MONAI Label's "slice") when it lies in the roi's z range,
    else the last click's, else the roi's middle (Slicer sends a box alone with a slice offset in mm)."""
    span = sorted(float(v) for v in roi[4:6]) if roi and len(roi) >= 6 else None
    if given is not None and (span is None or span[0] - 0.5 <= float(given) <= span[1] + 0.5):
        return int(round(float(given)))
    if clicks:
        return int(round(float(clicks[-1][0][2])))
    if span is not None:
        return int(round((span[0] + span[1]) / 2))
    raise InputError("a volume prompt needs a slice: points [x, y, z], a roi with z, or params 'slice'")


def _in_previous_order(points: list[list[float]], session: PromptSession | None) -> list[list[float]]:
    """``points`` with those the client's last prompt had first, in its order, then the new ones."""
    if session is None or session.answer is None:
        return points
    before = session.answer.prompt
    old = [[float(x), float(y), float(lab)] for (x, y), lab in zip(before.points.tolist(), before.labels.tolist())]
    if not all(p in points for p in old):
        return points
    return old + [p for p in points if p not in old]


def _components(label: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """One object per connected part of each value of a 2D label map: (ids, {id: value})."""
    out = np.zeros(label.shape, dtype=np.int64)
    values: dict[int, int] = {}
    for value in (int(v) for v in np.unique(label) if v):
        parts, n = ndimage.label(label == value)
        first = len(values)
        out[parts > 0] = parts[parts > 0] + first
        values.update({first + part: value for part in range(1, n + 1)})
    return out, values


def _nifti_bytes(array: np.ndarray, grid) -> bytes:
    """A [z, y, x] array as .nii.gz bytes on ``grid`` (``io.nifti_nrrd.write_nifti``)."""
    from medsamkit.io.nifti_nrrd import write_nifti

    with tempfile.TemporaryDirectory(prefix="medsamkit-nifti-") as scratch:
        return write_nifti(array, Path(scratch) / "x.nii.gz", like=grid).read_bytes()
