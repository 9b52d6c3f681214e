"""THE place where a prompt with clicks becomes masks, on any model: the native point path of the decoder,
or the click search for models that only understand boxes (``prompts.search``).

``ClickAnswerer(predictor, strategy).answer(prompts, ...)`` answers a batch of prompts on the predictor's
current embedding. Strategies: ``native`` (the decoder reads the points, the previous logits come back as the
mask prompt: the SAM protocol), ``search`` (clicks without a box are answered by searching boxes around them;
each corrective click edits the previous answer where the click says it is wrong, with the model's own
candidates), ``mixed`` (for models trained with points: clicks given together are read by the decoder, as
``native``; a click after an answer corrects it, as ``search``), ``auto`` (for a fine-tuned run, the one its
validation chose for its weights; else native for models trained with points, search for box-only ones). A
prompt without points is answered by the model directly under every strategy, so box answers do not depend on
it; ``box_output="fit"`` answers a box alone with the model's output that fills it best
(``prompts.boxes.fitting_outputs``) instead of the single output.

Under ``search`` an answer is defined by the prompt alone: a prompt with k clicks is the answer to its first
k-1 clicks corrected by the last one (the answer to a box alone, or a search for the first clicks without a
box). Answers are remembered per embedding, so a click session costs one correction per click; a prompt met
for the first time is built click by click. Under ``mixed`` a prompt whose earlier clicks were answered on this
embedding (or whose ``parents`` are given) is that answer corrected by its last click; any other is the
decoder's answer to all its clicks: a session's corrections, clicks given at once. Every click is honoured
(search, mixed): the final mask holds each positive click and no negative one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import torch

from medsamkit.core.errors import InputError
from medsamkit.models.sam import CLICK_STRATEGIES
from medsamkit.predictor import Prediction, Predictor, upscale_logits
from medsamkit.prompts.boxes import BOX_OUTPUTS, fitted_answer
from medsamkit.prompts.click_masks import box_mask, clicked_parts, enforce, nearer_part, parts_at
from medsamkit.prompts.corrections import (
    CorrectionSettings,
    bend,
    disk_edit,
    distance_of,
    is_near,
    mask_radius,
    region_edit,
)
from medsamkit.prompts.ranking import honours
from medsamkit.prompts.search import Candidates, distinct, search_many, sharpen
from medsamkit.prompts.search_settings import SearchSettings
from medsamkit.prompts.simulate import Prompt, prompt_signature, stack_prompts, tight_box
from medsamkit.prompts.walker import intensity_levels, walker_refine

STRATEGIES = ("auto", *CLICK_STRATEGIES)  # auto resolves to one of the others
MEMORY = 512  # answers remembered per embedding (a click session needs the previous one of each object)


def resolve_strategy(model: torch.nn.Module, requested: str = "auto") -> str:
    """``native``, ``search`` or ``mixed`` for ``model``: ``auto`` takes the one a fine-tuning run's validation
    chose for its weights (``model.click_strategy``), else native for point-trained models, search for box-only."""
    if requested not in STRATEGIES:
        raise InputError(f"unknown click strategy {requested!r}; choose one of: {', '.join(STRATEGIES)}")
    if requested == "auto":
        chosen = getattr(model, "click_strategy", None)
        if chosen in CLICK_STRATEGIES:
            return chosen
        return "native" if bool(getattr(model, "point_prompts", True)) else "search"
    return requested


@dataclass
class _Answer:
    """A search answer at the view's resolution: candidates best first and their predicted IoU."""

    masks: list[np.ndarray]
    iou: list[float]


class ClickAnswerer:
    """Answers prompts (boxes, clicks, both) on the predictor's current embedding with one click strategy."""

    def __init__(self, predictor: Predictor, strategy: str = "auto", settings: SearchSettings | None = None,
                 corrections: CorrectionSettings | None = None, box_output: str = "single") -> None:
        self.predictor = predictor
        self.strategy = resolve_strategy(predictor.model, strategy)
        if box_output not in BOX_OUTPUTS:
            raise InputError(f"unknown box output {box_output!r}; choose one of: {', '.join(BOX_OUTPUTS)}")
        self.box_output = box_output  # "fit": a box alone is answered by the output that fills it (prompts.boxes)
        self.settings = settings or SearchSettings()
        self.corrections = corrections or CorrectionSettings()
        self._memory: OrderedDict[tuple, _Answer] = OrderedDict()
        self._features: torch.Tensor | None = None
        self._levels: tuple[np.ndarray, tuple[float, float, float]] | None = None  # (image, its intensity_levels)

    # --- public ---------------------------------------------------------------------------------------
    def answer(self, prompts: list[Prompt], multimask: bool = False, mask_input: np.ndarray | None = None,
               parents: list[tuple[np.ndarray, float] | None] | None = None) -> Prediction:
        """Masks (P, C, H, W), predicted IoU (P, C) and low-res logits (P, C, m, m) for ``prompts``.

        ``mask_input`` (P, 1, m, m): the previous logits (native; mixed: for the prompts the decoder reads).
        ``parents``: per prompt, the mask the person kept of the previous answer and its predicted IoU (search,
        mixed; default: the remembered best answer)."""
        if not prompts:
            raise InputError("no prompts to answer")
        if self.strategy == "native" or all(len(p.points) == 0 for p in prompts):
            kwargs = stack_prompts(prompts)
            if mask_input is not None:
                kwargs["mask_input"] = mask_input
            if self.box_output == "fit" and not multimask and set(kwargs) == {"boxes"}:  # a box alone
                pred, _ = fitted_answer(self.predictor, kwargs["boxes"])
            else:
                pred = self.predictor.predict(multimask=multimask, **kwargs)
            if self.strategy != "native":
                self._follow_embedding()
                for p, masks, iou in zip(prompts, pred.masks, pred.iou):
                    self._remember((prompt_signature(p), multimask), _box_answer(masks, iou))
            return pred
        self.predictor.check_prompts(**stack_prompts(prompts))
        for i, p in enumerate(prompts):
            if self.strategy == "search" and p.box is None and not (p.labels == 1).any() \
                    and (parents is None or parents[i] is None):
                raise InputError("clicks without a box need a positive click: a negative click alone marks "
                                 "nothing for this box-only model (click on the object, or draw a box)")
        self._follow_embedding()
        count = 3 if multimask else 1
        if self.strategy == "mixed":
            answers = self._mixed(prompts, multimask, mask_input, parents)
        else:
            if parents is None:
                self._search_ahead(prompts, multimask)
            answers = [self._answer_one(p, multimask, None if parents is None else parents[i])
                       for i, p in enumerate(prompts)]
        shape = self.predictor.embedding.original_size
        masks = np.zeros((len(prompts), count) + tuple(shape), dtype=bool)
        iou = np.zeros((len(prompts), count), dtype=np.float32)
        for i, a in enumerate(answers):
            for j in range(count):
                k = min(j, len(a.masks) - 1)
                masks[i, j], iou[i, j] = a.masks[k], a.iou[k]
        return Prediction(masks, iou, self._pseudo_logits(masks), ranked=True)

    # --- the mixed strategy ---------------------------------------------------------------------------
    def _mixed(self, prompts: list[Prompt], multimask: bool, mask_input: np.ndarray | None,
               parents: list[tuple[np.ndarray, float] | None] | None) -> list[_Answer]:
        """Answers under ``mixed``: a prompt with ``parents`` or a remembered answer to its earlier clicks is that
        answer corrected by its last click (``_correct``); the others are read by the decoder (batched, with
        their rows of ``mask_input`` when given), made to honour their clicks. All are remembered."""
        answers: list[_Answer | None] = [None] * len(prompts)
        fresh = []
        for i, p in enumerate(prompts):
            key = (prompt_signature(p), multimask)
            given = None if parents is None else parents[i]
            if given is not None and len(p.points):
                answers[i] = self._correct(p, np.asarray(given[0], dtype=bool), float(given[1]))
            elif key in self._memory:
                self._memory.move_to_end(key)
                answers[i] = self._memory[key]
            elif len(p.points) and (before := self._memory.get((prompt_signature(_parent(p)), multimask))) is not None:
                answers[i] = self._remember(key, self._correct(p, before.masks[0], before.iou[0]))
            else:
                fresh.append(i)
        for boxed in (True, False):  # a batch of prompts has boxes in all or none
            idx = [i for i in fresh if (prompts[i].box is not None) == boxed]
            if not idx:
                continue
            kwargs = stack_prompts([prompts[i] for i in idx])
            if mask_input is not None:
                kwargs["mask_input"] = np.asarray(mask_input)[idx]
            pred = self.predictor.predict(multimask=multimask, **kwargs)
            for j, i in enumerate(idx):
                p, read = prompts[i], _box_answer(pred.masks[j], pred.iou[j])
                read.masks = [enforce(m, p.points, p.labels) for m in read.masks]
                answers[i] = self._remember((prompt_signature(p), multimask), read)
        return answers

    # --- the search strategy --------------------------------------------------------------------------
    def _follow_embedding(self) -> None:
        feats = self.predictor.embedding.features
        if feats is not self._features:
            self._memory.clear()
            self._features = feats

    def _remember(self, key: tuple, answer: _Answer) -> _Answer:
        self._memory[key] = answer
        self._memory.move_to_end(key)
        while len(self._memory) > MEMORY:
            self._memory.popitem(last=False)
        return answer

    def _answer_one(self, prompt: Prompt, multimask: bool, parent: tuple[np.ndarray, float] | None) -> _Answer:
        """The search answer to one prompt (see the module docstring); ``parent`` (mask, predicted IoU)
        overrides the remembered answer to the prompt's earlier clicks (such answers are not remembered)."""
        key = (prompt_signature(prompt), multimask)
        if parent is not None and len(prompt.points):
            return self._correct(prompt, np.asarray(parent[0], dtype=bool), float(parent[1]))
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        if len(prompt.points) == 0:
            pred = self.predictor.predict(boxes=prompt.box[None], multimask=multimask)
            return self._remember(key, _box_answer(pred.masks[0], pred.iou[0]))
        if prompt.box is None and self._searches_whole(prompt):
            return self._remember(key, self._search(prompt, multimask))
        parent = self._answer_one(_parent(prompt), multimask, None)
        return self._remember(key, self._correct(prompt, parent.masks[0], parent.iou[0]))

    def _searches_whole(self, prompt: Prompt) -> bool:
        """Whether clicks without a box are answered by one search with all of them (else: the first
        clicks' answer corrected by the last)."""
        if len(prompt.points) == 1 or self.settings.whole_search == "always":
            return True
        return self.settings.whole_search == "positive" and bool((prompt.labels == 1).all())

    def _frame(self) -> tuple[tuple[int, int], np.ndarray]:
        emb = self.predictor.embedding
        return emb.input_size, self.predictor.coordinate_scale()

    def _to_view(self, logits: torch.Tensor) -> np.ndarray:
        """Low-res logits (K, m, m) -> masks (K, H, W) at the view's resolution."""
        emb = self.predictor.embedding
        s = self.predictor.model.preprocessing.input_size
        return (upscale_logits(logits[:, None].float(), s, emb.input_size, emb.original_size)[:, 0] > 0).cpu().numpy()

    def _candidates(self, clicks: np.ndarray, labels: np.ndarray, settings: SearchSettings | None = None
                    ) -> Candidates:
        return self._candidates_many([(clicks, labels)], settings)[0]

    def _candidates_many(self, clicks: list[tuple[np.ndarray, np.ndarray]], settings: SearchSettings | None = None
                         ) -> list[Candidates]:
        """The search's candidates for each (clicks, labels), with ``settings`` (default: the answerer's)."""
        frame, scale = self._frame()
        found = search_many(self.predictor.model, self.predictor.embedding.features, frame,
                            [(c * scale, lab) for c, lab in clicks], settings or self.settings, self.predictor.image)
        return [cands for cands, _ in found]

    def _search_ahead(self, prompts: list[Prompt], multimask: bool) -> None:
        """Search the prompts that need a search of their clicks alone in one batched decode (remembered)."""
        todo = {}
        for p in prompts:
            key = (prompt_signature(p), multimask)
            if p.box is None and len(p.points) and key not in self._memory and self._searches_whole(p):
                todo[key] = p
        if len(todo) < 2:
            return
        found = self._candidates_many([(p.points, p.labels) for p in todo.values()])
        picks = [self._picks(cands, multimask) for cands in found]
        logits = self._sharp(list(zip(found, picks)))
        for (key, p), cands, idx, low in zip(todo.items(), found, picks, logits):
            self._remember(key, self._search(p, multimask, (cands, idx, low)))

    def _picks(self, cands: Candidates, multimask: bool) -> list[int]:
        return distinct(cands.masks, 3 if multimask else 1, self.settings.distinct_iou)

    def _sharp(self, chosen: list[tuple[Candidates, list[int]]]) -> list[torch.Tensor]:
        """The full low-res logits of chosen candidates (``prompts.search.sharpen``)."""
        return sharpen(self.predictor.model, self.predictor.embedding.features, chosen, self.settings)

    def _search(self, prompt: Prompt, multimask: bool,
                found: tuple[Candidates, list[int], torch.Tensor] | None = None) -> _Answer:
        """Clicks without a box: the best distinct candidates of the search (three for multimask, else the
        best), each cut to its parts holding a positive click (``clicked_parts``) and made to honour the clicks.
        ``found``: the search already made (candidates, picks, their full logits)."""
        if found is None:
            cands = self._candidates(prompt.points, prompt.labels)
            picks = self._picks(cands, multimask)
            found = (cands, picks, self._sharp([(cands, picks)])[0])
        cands, picks, logits = found
        views = self._to_view(logits)
        if self.settings.clicked_parts:
            views = [clicked_parts(m, prompt.points[prompt.labels == 1]) for m in views]
        masks = [enforce(m, prompt.points, prompt.labels) for m in views]
        return _Answer(masks, [float(cands.iou[i]) for i in picks])

    def _correct(self, prompt: Prompt, mask: np.ndarray, iou: float) -> _Answer:
        """The answer to the prompt's earlier clicks, corrected where its last click says it is wrong
        (``prompts.corrections``): a click near the boundary bends it; a click far from it adds or removes
        the thing the model sees under the click."""
        xy, label = prompt.points[-1], int(prompt.labels[-1])
        fix = self.corrections
        if honours(mask, xy[None], np.array([label])).all():
            edited = mask
        else:
            sdf = distance_of(mask) if mask.any() else None  # shared by every edit below (an empty one reads none)
            if is_near(mask, xy, fix, sdf):
                edited = bend(mask, xy, label, fix, sdf)
            else:
                edited = region_edit(mask, self._thing_at(prompt, mask), label, fix)
                if edited is None:
                    edited = disk_edit(mask, xy, label, fix, sdf)
        return _Answer([enforce(self._walked(edited, prompt, mask), prompt.points, prompt.labels)], [iou])

    def _walked(self, mask: np.ndarray, prompt: Prompt, before: np.ndarray) -> np.ndarray:
        """A small object's corrected mask without a box, its boundary placed by the random walker on the view's
        grey levels (``CorrectionSettings.walker_radius``), where that moves the mask ``before`` the last click the
        click's way (``walker_direction``); the mask as it is otherwise, or without the image."""
        fix, image = self.corrections, self.predictor.image
        # (the predictor keeps only an image of the embedding's size: the answers' size)
        if prompt.box is not None or fix.walker_radius <= 0 or image is None or mask_radius(mask) > fix.walker_radius:
            return mask
        if self._levels is None or self._levels[0] is not image:  # the whole view's statistics, once per image
            self._levels = (image, intensity_levels(image))
        walked = walker_refine(mask, prompt.points, prompt.labels, image, fix.walker_band, self._levels[1])
        positive = prompt.labels[-1] == 1
        if fix.walker_direction and (walked.sum() < before.sum() if positive else walked.sum() > before.sum()):
            return mask  # the walker undid the click's direction
        return walked

    def _thing_at(self, prompt: Prompt, mask: np.ndarray) -> np.ndarray:
        """What the model sees under the prompt's last click: the best search answer around it that keeps
        clear of the earlier clicks of the other kind; the part connected to the click. For a positive click
        it is cut to the box grown to hold the positive clicks: the prompt's box, or without one, the box of
        the current ``mask`` when the part is larger than ``max_growth`` x the mask (a click in the missed
        half of a nucleus otherwise adds the cluster of nuclei around it). Without a box, a negative click's
        part keeps only the pixels nearer to it than to every positive click (``split_negatives``). The search
        here has no boxes grown from the image content (``SearchSettings.similar``): with them the 3D engine's
        corrections lost on the axial lung volumes (docs/protocols.md "Boxes grown from the image content"); nor
        the edge term (``SearchSettings.edge_weight``): with it the held-out corrections lost on GlaS and the lung
        (docs/protocols.md "Edges under the outline")."""
        xy, label = prompt.points[-1], int(prompt.labels[-1])
        others = prompt.labels[:-1] != label
        clicks = np.concatenate([xy[None], prompt.points[:-1][others]])
        labels = np.concatenate([[1], np.zeros(int(others.sum()), dtype=np.int32)])
        cands = self._candidates(clicks, labels, replace(self.settings, similar=(), edge_weight=0.0))
        part = parts_at(self._to_view(self._sharp([(cands, [0])])[0])[0], xy)
        if label != 1:
            positives = prompt.points[prompt.labels == 1]
            if prompt.box is None and self.corrections.split_negatives and len(positives):
                part = nearer_part(part, xy, positives)
            return part
        if prompt.box is not None:
            return part & box_mask(prompt, mask.shape)
        area = np.count_nonzero(mask)
        growth = self.corrections.max_growth
        if area and growth > 0 and np.count_nonzero(part) > growth * area:
            part &= box_mask(Prompt(tight_box(mask), prompt.points, prompt.labels), mask.shape)
        return part

    def _pseudo_logits(self, masks: np.ndarray) -> np.ndarray:
        """Masks (P, C, H, W) as low-res logits (+10 inside, -10 outside) in the model frame, so a search
        answer has the same fields as a native one."""
        model, emb = self.predictor.model, self.predictor.embedding
        m = model.mask_input_size[0]
        per_px = m / model.preprocessing.input_size
        h, w = int(round(emb.input_size[0] * per_px)), int(round(emb.input_size[1] * per_px))
        x = torch.from_numpy(masks.astype(np.float32)).flatten(0, 1)[:, None]
        small = torch.nn.functional.interpolate(x, size=(h, w), mode="area")[:, 0] >= 0.5
        out = np.full((masks.shape[0] * masks.shape[1], m, m), -10.0, dtype=np.float32)
        out[:, :h, :w] = np.where(small.numpy(), 10.0, -10.0)
        return out.reshape(masks.shape[:2] + (m, m))


def _box_answer(masks: np.ndarray, iou: np.ndarray) -> _Answer:
    """A model answer (C, H, W) as a search answer, best predicted IoU first."""
    order = np.argsort(-np.asarray(iou), kind="stable")
    return _Answer([masks[i] for i in order], [float(iou[i]) for i in order])


def _parent(prompt: Prompt) -> Prompt:
    return Prompt(prompt.box, prompt.points[:-1], prompt.labels[:-1])
