"""The model side of an annotation session: embeddings (one background worker, the on-disk
``EmbeddingCache`` under --out, a few kept in memory), prompted masks with the click-session semantics of
``medsamkit.prompts``, everything mode and the class head's suggestion.

Click semantics: a prompt that is the previous prompt of the same view plus one click is decoded with the
previous result's low-res logits as the mask prompt (``Prompt.with_click``; ``ClickSession.inputs``), so
the API reproduces ``run_mode_model`` exactly; a prompt already answered (undoing a click) is answered
from memory, as it was.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from medsamkit.core.errors import InputError
from medsamkit.embedding.cache import EmbeddingCache, encoder_fingerprint
from medsamkit.models.finetuned import ClassHeadMaskDecoder
from medsamkit.models.loading import load_model, model_fingerprint
from medsamkit.models.registry import get_spec, names_finetuned
from medsamkit.predictor import Embedding, Predictor
from medsamkit.prompts.simulate import Prompt, stack_prompts
from medsamkit.samaug.everything import EverythingConfig, MaskRecord, generate_masks

ViewKey = tuple  # (image id, axis, slice), + (window,) for a tile of a 2D image (annotate.views)
ANSWERS_KEPT = 48  # per view: enough to undo a long click session


@dataclass
class Answer:
    """The model's answer to one prompt: candidates (C, H, W), their predicted IoU, the best one's logits."""

    prompt: Prompt
    masks: np.ndarray
    iou: np.ndarray
    logits: np.ndarray  # (C, m, m) low-res logits of every candidate
    seconds: float
    mask_from: int | None  # the previous answer's candidate whose logits went in as mask prompt

    @property
    def mask_prompted(self) -> bool:
        """True when the previous answer's logits went in as the mask prompt."""
        return self.mask_from is not None

    def best(self) -> int:
        """Index of the candidate with the highest predicted IoU."""
        return int(np.argmax(self.iou))


def prompt_signature(prompt: Prompt) -> tuple:
    """A hashable key of a prompt (box + ordered labelled points)."""
    box = None if prompt.box is None else tuple(np.round(prompt.box, 3).tolist())
    points = tuple((round(float(x), 3), round(float(y), 3), int(v))
                   for (x, y), v in zip(prompt.points.tolist(), prompt.labels.tolist()))
    return box, points


def parent_signature(prompt: Prompt) -> tuple | None:
    """The signature of the prompt this one extends by its last click, None without clicks."""
    if len(prompt.points) == 0:
        return None
    return prompt_signature(Prompt(prompt.box, prompt.points[:-1], prompt.labels[:-1]))


def model_identity(name: str, checkpoint: str | None) -> dict:
    """Model name and the sha256 of its weights (fine-tuned file, or the registry's pinned bundled file)."""
    if names_finetuned(name):
        return {"model": name, "checkpoint_sha256": model_fingerprint(name)}
    spec = get_spec(name)
    if checkpoint is None:
        return {"model": name, "checkpoint_sha256": spec.sha256}
    from medsamkit.models.checkpoints import sha256_of

    return {"model": name, "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_of(checkpoint)}


class Segmenter:
    """One model for the session: embeddings by view, prompted masks, everything mode, class suggestions."""

    def __init__(self, model: torch.nn.Module, cache_folder, identity: dict, keep: int = 16) -> None:
        self.model = model.eval()
        self.identity = identity
        self.predictor = Predictor(model)
        self.cache = EmbeddingCache(cache_folder, model)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._futures: OrderedDict[ViewKey, Future] = OrderedDict()
        self._answers: dict[ViewKey, OrderedDict[tuple, Answer]] = {}
        self._lock = threading.Lock()  # the predictor holds one embedding at a time
        # the futures have their own lock: opening an image must not wait for a long everything-mode run
        self._futures_lock = threading.Lock()
        self._keep = keep
        self._prefetch: deque = deque()  # (source, pixels) embedded when the worker has nothing else to do

    @classmethod
    def load(cls, name: str, checkpoint: str | None, device, cache_folder) -> Segmenter:
        """Load the model by registry name or fine-tuned run and open the cache."""
        return cls(load_model(name, checkpoint, device), cache_folder, model_identity(name, checkpoint))

    @property
    def point_prompts(self) -> bool:
        """Whether the model answers point prompts without a box."""
        return bool(getattr(self.model, "point_prompts", True))

    @property
    def class_names(self) -> list[str]:
        """Classes of the model's class head (empty without one)."""
        return list(getattr(self.model, "class_names", []) or [])

    def embedding(self, key: ViewKey, pixels: np.ndarray) -> Future:
        """The embedding of a view as a future (started on the worker when new; cached on disk)."""
        with self._futures_lock:
            future = self._futures.get(key)
            if future is None or (future.done() and future.exception() is not None):
                future = self._worker.submit(self.cache.get_or_compute, self.predictor, pixels, key[0])
                self._futures[key] = future
            self._futures.move_to_end(key)
            while len(self._futures) > self._keep:
                self._futures.popitem(last=False)
        return future

    def prefetch(self, views: list[tuple[str, np.ndarray]]) -> None:
        """Embed ``views`` (source name, pixels) into the disk cache in the background, one worker task at a
        time, so a person's own request waits for one of them at most (the tiles of a large 2D image)."""
        with self._futures_lock:
            idle = not self._prefetch
            self._prefetch.extend(views)
        if idle and views:
            self._worker.submit(self._prefetch_one)

    def _prefetch_one(self) -> None:
        with self._futures_lock:
            if not self._prefetch:
                return
            source, pixels = self._prefetch.popleft()
            more = bool(self._prefetch)
        cache = self.cache
        if cache.load(cache.key(pixels)) is None:
            cache.get_or_compute(self.predictor, pixels, source)
        if more:
            try:
                self._worker.submit(self._prefetch_one)
            except RuntimeError:  # the worker was shut down (close)
                pass

    def is_embedded(self, key: ViewKey) -> bool:
        """True when the view's embedding is in memory."""
        future = self._futures.get(key)
        return future is not None and future.done() and future.exception() is None

    def predict(self, key: ViewKey, pixels: np.ndarray, prompt: Prompt, multimask: bool,
                mask_from: int | None = None) -> Answer:
        """Candidates for ``prompt`` on a view (see the module docstring for the click semantics).

        ``mask_from``: which candidate of the previous answer feeds its logits back (default: the best
        predicted IoU, as ``ClickSession``); the person may have picked another of the three.
        """
        if prompt.box is None and len(prompt.points) == 0:
            raise InputError("no prompt: give a box or at least one point")
        if prompt.box is None and not self.point_prompts:
            raise InputError(f"model {self.model.name!r} takes box prompts only: drag a box first, "
                             "then click inside it to correct")
        answers = self._answers.setdefault(key, OrderedDict())
        parent = answers.get((parent_signature(prompt), multimask)) if len(prompt.points) else None
        choice = None if parent is None else (parent.best() if mask_from is None else int(mask_from))
        if parent is not None and not 0 <= choice < len(parent.logits):
            raise InputError(f"mask_from {choice}: the previous answer has {len(parent.logits)} candidates")
        sig = (prompt_signature(prompt), multimask)
        cached = answers.get(sig)
        if cached is not None and cached.mask_from == choice:
            answers.move_to_end(sig)
            return cached
        embedding: Embedding = self.embedding(key, pixels).result()
        kwargs = stack_prompts([prompt])
        if parent is not None:
            kwargs["mask_input"] = parent.logits[choice][None, None]
        with self._lock:
            t0 = time.perf_counter()
            self.predictor.set_embedding(embedding, key[0])
            pred = self.predictor.predict(multimask=multimask, **kwargs)
            seconds = time.perf_counter() - t0
        answer = Answer(prompt, pred.masks[0], pred.iou[0], pred.low_res_logits[0], seconds, choice)
        answers[sig] = answer
        while len(answers) > ANSWERS_KEPT:  # full-resolution candidates: keep the recent ones only
            answers.popitem(last=False)
        for stale in [k for k in self._answers if k not in self._futures]:
            del self._answers[stale]
        return answer

    def forget_prompts(self, key: ViewKey) -> None:
        """Drop the remembered answers of a view (after a commit or Esc: the next box starts afresh)."""
        self._answers.pop(key, None)

    def everything(self, pixels: np.ndarray, cfg: EverythingConfig | None = None) -> list[MaskRecord]:
        """Everything-mode proposals for a whole view (its own predictor: it embeds tile by tile)."""
        with self._lock:
            return generate_masks(Predictor(self.model), pixels, cfg or EverythingConfig())

    @torch.inference_mode()
    def class_probabilities(self, key: ViewKey, pixels: np.ndarray, answer: Answer) -> np.ndarray | None:
        """Class-head probabilities (K,) for the prompt that made ``answer``; None without a class head."""
        decoder = self.model.mask_decoder
        if not isinstance(decoder, ClassHeadMaskDecoder):
            return None
        embedding = self.embedding(key, pixels).result()
        with self._lock:
            self.predictor.set_embedding(embedding, key[0])
            scale = self.predictor.coordinate_scale()
            dev = self.predictor.device
            prompt = answer.prompt
            boxes = None if prompt.box is None else torch.from_numpy(prompt.box[None] * np.tile(scale, 2)).to(dev)
            points = None
            if len(prompt.points):
                points = (torch.from_numpy(prompt.points[None] * scale).to(dev),
                          torch.from_numpy(prompt.labels[None].astype(np.int64)).to(dev))
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
            pe = self.model.prompt_encoder.get_dense_pe()
            _, _, logits = decoder.predict_all(self.predictor.embedding.features, pe, sparse, dense)
        return torch.softmax(logits[0].float(), dim=0).cpu().numpy()

    def swap(self, model: torch.nn.Module, identity: dict) -> None:
        """Serve ``model`` from now on (hot swap): a request being decoded finishes with the old model, the
        next one uses the new. Embeddings are kept when the image encoder is the same (decoder fine-tuning)."""
        model = model.eval()
        same_encoder = encoder_fingerprint(model) == encoder_fingerprint(self.model)
        predictor = Predictor(model)
        with self._lock, self._futures_lock:
            self.model, self.predictor, self.identity = model, predictor, dict(identity)
            self.cache = EmbeddingCache(self.cache.folder, model)
            self._answers.clear()  # old low-res logits must not prompt the new decoder
            if not same_encoder:
                self._futures.clear()

    def close(self) -> None:
        """Stop the embedding worker."""
        with self._futures_lock:
            self._prefetch.clear()
        self._worker.shutdown(wait=False, cancel_futures=True)
