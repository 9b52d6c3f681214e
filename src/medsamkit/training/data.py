"""What a fine-tuning run trains on: the cases of all --data sets, train/validation splits that keep images
and patient volumes whole, the evaluate engine's tiles, and the seeded batches of each epoch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medsamkit.core.errors import InputError
from medsamkit.core.objects import ImageObject, Window, extract_objects, parse_classes
from medsamkit.core.seeds import name_key
from medsamkit.core.tiling import plan_tiles, tile_size_for
from medsamkit.io.datasets import Case, open_dataset
from medsamkit.training.config import FinetuneConfig

ClassOf = Callable[[int, ImageObject], int]


@dataclass
class TrainTile:
    """A tile of one image with the objects assigned to it (and their class indices)."""

    case: int
    window: Window
    objects: list[ImageObject]
    classes: list[int] = field(default_factory=list)


def load_cases(cfg: FinetuneConfig) -> tuple[list[Case], list[int], list[str]]:
    """All 2D cases of all --data sets (a data SPEC or an annotation folder), the dataset index of each,
    and the dataset names."""
    specs = [cfg.data] if isinstance(cfg.data, str) else list(cfg.data)
    if not specs:
        raise InputError("no --data given")
    cases, origin, names = [], [], []
    for i, spec in enumerate(specs):
        ds = open_dataset(spec, window=cfg.window)  # an annotation folder is a SPEC too (io.spec)
        if len(ds) == 0:
            raise InputError(f"{spec}: empty dataset")
        names.append(ds.name if ds.name not in names else str(spec))
        for case in ds.cases(cfg.max_images):
            if len(specs) > 1:
                case.name = f"{names[-1]}/{case.name}"
            cases.append(case)
            origin.append(i)
    return cases, origin, names


def class_names_for(cases: list[Case], origin: list[int], names: list[str],
                    classes: set[int] | None = None) -> list[str]:
    """Class names for the head: one per dataset with several --data, else the values of class label maps
    (only those in ``classes`` when given)."""
    if len(names) > 1:
        return list(names)
    if all(c.kind == "class" for c in cases):
        values = sorted({int(v) for c in cases for v in np.unique(c.label) if v > 0})
        values = [v for v in values if classes is None or v in classes]
        if len(values) >= 2:
            return [str(v) for v in values]
    raise InputError(
        f"{names[0]}: --class-head needs a class label map with at least two classes, or several --data sets"
    )


def class_index_function(names: list[str], origin: list[int], class_names: list[str]) -> ClassOf:
    """(case index, object) -> class index of the head: the --data set with several, else the label value."""

    def class_of(case_index: int, obj: ImageObject) -> int:
        if len(names) > 1:
            return origin[case_index]
        return class_names.index(str(obj.label))

    return class_of


def split_by_image(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/validation split of image indices; at least one of each when n >= 2 and fraction > 0."""
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def split_cases(cases: list[Case], origin: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train/validation case indices, split within each --data set by image, and by volume for slices:
    all slices of one patient volume land on the same side, so validation never sees a training patient
    (a set holding a single volume falls back to splitting its slices)."""
    train: list[int] = []
    val: list[int] = []
    for k in sorted(set(origin)):
        members = [i for i, o in enumerate(origin) if o == k]
        group_of = {i: cases[i].source for i in members}
        groups = list(dict.fromkeys(group_of[i] for i in members))
        if len(groups) < 2:
            group_of = {i: cases[i].name for i in members}
            groups = [cases[i].name for i in members]
        _, held = split_by_image(len(groups), fraction, seed + k)
        held_out = {groups[g] for g in held}
        for i in members:
            (val if group_of[i] in held_out else train).append(i)
    return sorted(train), sorted(val)


def grow_validation(cases: list[Case], train: list[int], val: list[int], objects: dict[int, int], minimum: int,
                    seed: int) -> tuple[list[int], list[int]]:
    """Move whole images (sources) from training to validation, in a seeded order, until validation holds at
    least ``minimum`` objects (``objects``: per case index); training keeps at least half of all objects."""
    total = sum(objects.values())
    have = sum(objects[i] for i in val)
    sources = list(dict.fromkeys(cases[i].source for i in train))
    order = np.random.default_rng([seed, 11]).permutation(len(sources))
    train, val = list(train), list(val)
    for k in order:
        if have >= minimum:
            break
        moving = [i for i in train if cases[i].source == sources[k]]
        n = sum(objects[i] for i in moving)
        if total - have - n < total / 2 or len(moving) == len(train):
            continue
        train = [i for i in train if i not in moving]
        val += moving
        have += n
    return sorted(train), sorted(val)


def case_objects(case: Case, cfg: FinetuneConfig, limit: int | None = None) -> list[ImageObject]:
    """The objects of a case a run trains on: at least --min-area px, of the --classes label values, at
    most ``limit`` of them (chosen with the seed)."""
    objs = list(extract_objects(case.label, case.kind, cfg.min_area))
    wanted = parse_classes(cfg.classes)
    if wanted is not None:
        objs = [o for o in objs if o.label in wanted]
    if limit is not None and len(objs) > limit:
        pick = np.sort(np.random.default_rng([cfg.seed, name_key(case.name)]).choice(len(objs), limit, replace=False))
        objs = [objs[i] for i in pick]
    return objs


def plan_case_tiles(case: Case, index: int, cfg: FinetuneConfig, input_size: int, limit: int | None = None,
                    class_of: ClassOf | None = None) -> list[TrainTile]:
    """The evaluate engine's tiles for one image (--tile, --tile-overlap) with the objects of each."""
    objs = case_objects(case, cfg, limit)
    if not objs:
        return []
    shape = case.label.shape[:2]
    tile = tile_size_for(shape, cfg.tile_size, input_size)
    tiles = []
    for window, members in plan_tiles(objs, shape, tile, cfg.tile_overlap).items():
        classes = [class_of(index, o) for o in members] if class_of else []
        tiles.append(TrainTile(index, window, members, classes))
    return tiles


def epoch_batches(tiles: list[TrainTile], cfg: FinetuneConfig, epoch: int) -> list[tuple[int, list[int]]]:
    """(tile index, object indices) batches of one epoch, in a seeded order; objects of one tile per batch.

    With max_objects, each image contributes that many objects taken tile by tile (tiles in a new random
    order each epoch), so batches stay full and one cached embedding serves a whole batch.
    """
    rng = np.random.default_rng([cfg.seed, 11, epoch])
    order = {t: [int(j) for j in rng.permutation(len(tile.objects))] for t, tile in enumerate(tiles)}
    if cfg.max_objects is not None:
        by_case: dict[int, list[int]] = {}
        for t, tile in enumerate(tiles):
            by_case.setdefault(tile.case, []).append(t)
        for case_tiles in by_case.values():
            left = cfg.max_objects
            for k in rng.permutation(len(case_tiles)):
                t = case_tiles[int(k)]
                order[t], left = order[t][:left], left - min(left, len(order[t]))
    batches = []
    for t in rng.permutation(len(tiles)):
        objs = order[int(t)]
        batches += [(int(t), objs[i : i + cfg.batch_size]) for i in range(0, len(objs), cfg.batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]
