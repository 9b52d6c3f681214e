"""Fit the click search's ranking to labelled data (``medsamkit fit-clicks``): no model training, minutes on a CPU.

A box-only model answers a click through the click search (``prompts.search``), whose ranking of candidate masks
was set by hand on two histology sets; a ranking fitted to one modality does not carry to another
(docs/protocols.md "A fitted ranking and off-centre squares"). This fits it to the user's own data: for a centre
click and a random click on objects of the data (``evaluate``'s views and object choice), the search's whole
candidate set (every side and aspect, squares off the click too, ``refine_sides`` 0) is decoded and each
candidate's ranking features (``prompts.ranking.ranking_features``) and true IoU kept. The weights w of the score
[f, f^2, 1] @ w maximise the mean expected IoU of the softmax(score / tau) choice. K-fold cross-validation by
image (by patient volume for slices) compares, on held-out images, the IoU of the fitted ranking's first candidate
(what the search answers with the written settings) with the default search's answer; ranking.json keeps the
fitted ranking only when it wins there, else the default settings. Samples are written per image and reused when
the same command is run again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medsamkit.core.atomic import save_npz_atomic, write_json_atomic
from medsamkit.core.errors import InputError
from medsamkit.core.results import RunStore
from medsamkit.core.runtime import select_device
from medsamkit.core.tiling import plan_tiles, tile_size_for
from medsamkit.evaluation.config import EvaluateConfig
from medsamkit.evaluation.engine import case_objects, iter_dataset
from medsamkit.io.datasets import Case
from medsamkit.metrics import iou
from medsamkit.models import load_model
from medsamkit.models.loading import model_fingerprint
from medsamkit.predictor import Predictor, upscale_logits
from medsamkit.prompts.ranking import FEATURES, HAND_RANKER, ranking_features, score_features
from medsamkit.prompts.search import search
from medsamkit.prompts.search_settings import RANKING_FILE, RANKING_FORMAT, SearchSettings
from medsamkit.prompts.simulate import initial_prompt

MODES = ("center", "random1")
DEPTH, DISTANCE = FEATURES.index("click_depth"), FEATURES.index("click_distance")
# what identifies the samples of a run folder (a rerun with other values would mix incomparable samples)
SAMPLE_KEYS = ("data", "model", "checkpoint", "max_objects", "tile_size", "tile_overlap", "offset", "reach", "seed",
               "window")


@dataclass
class ClickRankingConfig:
    """Everything `medsamkit fit-clicks` needs; the CLI only fills this in."""

    data: str
    out: str
    model: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None
    max_images: int | None = None
    max_objects: int | None = 40  # per image, chosen with the seed as evaluate chooses them
    tile_size: int | None = None  # as evaluate's --tile
    tile_overlap: int = 64
    window: str | None = None
    folds: int = 2  # cross-validation folds (by image, or by patient volume)
    tau: float = 0.05  # softmax temperature of the fitted objective
    offset: float = 0.3  # squares off the click (``SearchSettings.offset``) among the candidates
    reach: float = 3.0  # a click this many low-res px from a mask counts as inside it (under 5: the feature's cap)
    seed: int = 0
    # serve the fitted ranking coarse to fine (squares, then other aspects at the 2 best sides): ~1.5x faster
    # clicks, but not exactly the one-call answers the cross-validation scored (README "fit-clicks")
    coarse_to_fine: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise InputError(f"--folds must be at least 2, not {self.folds}")
        if not 0 <= self.reach < 5:
            raise InputError(f"reach must be at least 0 and under 5 low-res px, not {self.reach}")
        if self.offset < 0 or self.tau <= 0:
            raise InputError("offset must be >= 0 and tau > 0")


@dataclass
class Sample:
    """One simulated click: its image group, mode, candidate features (K, F), candidates' true IoU (K,), which
    candidates break the click (K,), and the IoU of the default search's answer."""

    group: str
    mode: str
    features: np.ndarray
    iou: np.ndarray
    broken: np.ndarray
    default_iou: float


def candidate_settings(cfg: ClickRankingConfig, ranker: tuple[float, ...] = ()) -> SearchSettings:
    """The search the fitted ranking is for: every candidate in one decode, squares off the click too (served
    with the default tightening of the best one, ``SearchSettings.tighten``, which the fit does not see); without
    the boxes grown from the image content (``SearchSettings.similar``): the fit was measured without them."""
    return SearchSettings(ranker=ranker, offset=cfg.offset, reach=cfg.reach, refine_sides=0, tighten=0, similar=(),
                          edge_weight=0.0)


def case_samples(predictor: Predictor, case: Case, index: int, cfg: ClickRankingConfig) -> list[Sample]:
    """A centre and a random click on each chosen object of one case: the candidates' features and IoU."""
    model = predictor.model
    per_px = model.mask_input_size[0] / model.preprocessing.input_size
    view_cfg = EvaluateConfig(data=cfg.data, out="", max_objects=cfg.max_objects, tile_size=cfg.tile_size,
                              tile_overlap=cfg.tile_overlap, seed=cfg.seed)
    chosen, _ = case_objects(case, view_cfg)
    tile = tile_size_for(case.label.shape[:2], cfg.tile_size, model.preprocessing.input_size, view_cfg.view_min_side)
    rng = np.random.default_rng([cfg.seed, index])
    full, default = candidate_settings(cfg), SearchSettings()
    out = []
    for window, objects in plan_tiles(chosen, case.label.shape[:2], tile, view_cfg.tile_overlap).items():
        y0, x0, y1, x1 = window
        predictor.set_image(case.image[y0:y1, x0:x1], case.name)
        emb, scale = predictor.embedding, predictor.coordinate_scale()
        for obj in objects:
            truth = obj.mask_in(window)
            for mode in MODES:
                prompt = initial_prompt(mode, truth, rng)
                clicks, labels = prompt.points * scale, prompt.labels
                cands, _ = search(model, emb.features, emb.input_size, clicks, labels, full)
                feats = ranking_features(cands, clicks * per_px, labels, per_px, full.reach, full.stability_offset)
                broken = feats[:, DISTANCE] > full.reach / cands.stride
                feats[broken, DEPTH] = 0.0  # as the search ranks: a candidate breaking a click has no depth
                answer, _ = search(model, emb.features, emb.input_size, clicks, labels, default, predictor.image)
                out.append(Sample(case.source, mode, feats, _view_iou(predictor, cands.logits, truth), broken,
                                  float(_view_iou(predictor, answer.logits[:1], truth)[0])))
    return out


def _view_iou(predictor: Predictor, logits: torch.Tensor, truth: np.ndarray) -> np.ndarray:
    """IoU with ``truth`` of each candidate's low-res logits (K, m, m) brought to the view."""
    emb = predictor.embedding
    views = upscale_logits(logits[:, None].float(), predictor.model.preprocessing.input_size, emb.input_size,
                           emb.original_size)[:, 0] > 0
    return np.array([iou(v, truth) for v in views.cpu().numpy()])


def fit_weights(samples: list[Sample], tau: float, steps: int = 400) -> np.ndarray:
    """Weights w maximising the mean over samples of sum(softmax(([f, f^2, 1] @ w - 10 broken) / tau) * IoU)."""
    design = [np.concatenate([s.features, s.features ** 2, np.ones((len(s.iou), 1))], 1) for s in samples]
    start = np.linalg.lstsq(np.concatenate(design), np.concatenate([s.iou for s in samples]), rcond=None)[0]
    # all samples in one padded batch (N, K, D); padding candidates get a score far below every real one
    k = max(len(s.iou) for s in samples)
    x = torch.zeros(len(samples), k, design[0].shape[1], dtype=torch.float64)
    y = torch.zeros(len(samples), k, dtype=torch.float64)
    off = torch.full((len(samples), k), 1e6, dtype=torch.float64)
    for i, (d, s) in enumerate(zip(design, samples)):
        x[i, : len(d)], y[i, : len(d)] = torch.from_numpy(d), torch.from_numpy(s.iou)
        off[i, : len(d)] = torch.from_numpy(10.0 * s.broken)
    w = torch.tensor(start).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        gain = (torch.softmax((x @ w - off) / tau, 1) * y).sum(1).mean()
        (-gain + 1e-3 * (w * w).sum()).backward()
        opt.step()
    return w.detach().numpy()


def first_iou(sample: Sample, weights: np.ndarray | tuple[float, ...]) -> float:
    """The true IoU of the candidate the search answers with under ``weights``."""
    return float(sample.iou[np.argmax(score_features(sample.features, weights) - 10.0 * sample.broken)])


def cross_validate(samples: list[Sample], cfg: ClickRankingConfig) -> dict:
    """Per mode, the mean held-out IoU of the fitted ranking's answer and of the default search's answer, over
    ``cfg.folds`` folds of whole groups (images or patient volumes)."""
    groups = sorted({s.group for s in samples})
    if len(groups) < cfg.folds:
        raise InputError(f"{cfg.data}: {len(groups)} image(s) or volume(s) with objects; cross-validation needs at "
                         f"least --folds {cfg.folds}")
    order = np.random.default_rng(cfg.seed).permutation(len(groups))
    fold_of = {groups[g]: k % cfg.folds for k, g in enumerate(order)}
    fitted: dict[str, list[float]] = {m: [] for m in MODES}
    default: dict[str, list[float]] = {m: [] for m in MODES}
    best: dict[str, list[float]] = {m: [] for m in MODES}
    for fold in range(cfg.folds):
        weights = fit_weights([s for s in samples if fold_of[s.group] != fold], cfg.tau)
        for s in samples:
            if fold_of[s.group] == fold:
                fitted[s.mode].append(first_iou(s, weights))
                default[s.mode].append(s.default_iou)
                best[s.mode].append(best_iou(s))
    return {m: {"prompts": len(fitted[m]), "fitted_iou": round(float(np.mean(fitted[m])), 4),
                "default_iou": round(float(np.mean(default[m])), 4),
                "best_candidate_iou": round(float(np.mean(best[m])), 4)} for m in MODES if fitted[m]}


def best_iou(sample: Sample) -> float:
    """The true IoU of the best candidate honouring the click (of all when none does): what a perfect ranking of
    the fitted candidate set would answer, the headroom of any ranking."""
    honouring = ~np.asarray(sample.broken, dtype=bool)
    return float(sample.iou[honouring].max() if honouring.any() else sample.iou.max())


def _load_samples(path: Path) -> list[Sample]:
    with np.load(path, allow_pickle=False) as z:
        counts = z["counts"]
        cuts = np.cumsum(counts)[:-1]
        feats, ious, broken = (np.split(z[k], cuts) for k in ("features", "iou", "broken"))
        return [Sample(str(z["group"]), str(mode), f, i, b.astype(bool), float(d))
                for mode, f, i, b, d in zip(z["modes"], feats, ious, broken, z["default_iou"])]


def _save_samples(path: Path, samples: list[Sample], group: str) -> None:
    save_npz_atomic(path, compressed=False, group=np.array(group), modes=np.array([s.mode for s in samples], dtype=str),
                    counts=np.array([len(s.iou) for s in samples], dtype=np.int64),
                    features=np.concatenate([s.features for s in samples]) if samples
                    else np.zeros((0, len(FEATURES))),
                    iou=np.concatenate([s.iou for s in samples]) if samples else np.zeros(0),
                    broken=np.concatenate([s.broken for s in samples]) if samples else np.zeros(0, dtype=bool),
                    default_iou=np.array([s.default_iou for s in samples]))


def fit_click_ranking(cfg: ClickRankingConfig, predictor: Predictor | None = None) -> dict:
    """Collect samples (resuming), cross-validate, fit on all and write OUT/ranking.json; returns its content."""
    out = Path(cfg.out)
    predictor = predictor or Predictor(load_model(cfg.model, cfg.checkpoint, select_device(cfg.device)))
    identity = {"model_sha256": model_fingerprint(cfg.model)}
    # the run folder's identity: a folder holding another run's samples is refused (the one results store)
    RunStore(out, {**{k: asdict(cfg)[k] for k in SAMPLE_KEYS}, **identity}, {})
    dataset = iter_dataset(EvaluateConfig(data=cfg.data, out="", max_images=cfg.max_images, window=cfg.window))
    samples: list[Sample] = []
    index = -1
    bar = tqdm(desc="fit-clicks", unit="image", disable=not cfg.show_progress)  # volumes: one per slice
    for index, case in enumerate(dataset.cases()):
        path = out / "samples" / f"{index:05d}.npz"
        if not path.is_file():  # written atomically: a file there is a finished case
            _save_samples(path, case_samples(predictor, case, index, cfg), case.source)
        samples.extend(_load_samples(path))
        bar.update(1)
    bar.close()
    if not samples:
        raise InputError(f"{cfg.data}: no objects to click on (all smaller than evaluate's --min-area?)")
    folds = cross_validate(samples, cfg)
    gain = np.mean([v["fitted_iou"] - v["default_iou"] for v in folds.values()])
    chosen = "fitted" if gain > 0 else "default"
    settings = SearchSettings()
    if chosen == "fitted":
        settings = replace(candidate_settings(cfg, tuple(round(float(w), 6) for w in fit_weights(samples, cfg.tau))),
                           refine_sides=2 if cfg.coarse_to_fine else 0)
    result = {"format": RANKING_FORMAT, "chosen": chosen, "features": list(FEATURES),
              "ranker": list(settings.ranker or HAND_RANKER), "offset": settings.offset, "reach": settings.reach,
              "refine_sides": settings.refine_sides, "similar": list(settings.similar),
              "edge_weight": settings.edge_weight, "data": cfg.data, "images": index + 1,
              "sources": len({s.group for s in samples}), "prompts": len(samples),
              "cross_validation": {"folds": cfg.folds, "by": "image or patient volume", "modes": folds,
                                   "mean_iou_gain": round(float(gain), 4)},
              "config": asdict(cfg), **identity}
    write_json_atomic(out / RANKING_FILE, result)
    return result
