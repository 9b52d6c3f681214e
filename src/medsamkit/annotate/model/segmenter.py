"""The session's one model: embeddings (the on-disk ``EmbeddingCache`` under --out, a few kept in memory),
answers to a person's prompts with the click semantics of ``annotate.model.answers``, everything mode, the class
head's suggestion, and the hot swap of a learned model.

A prompt becomes a model call in one place (``_ask``) and is refused in one place (``check_prompt``). The
``Segmenter`` is the ``ModelHost`` propagation and learning run on (``annotate.model.host``). Every embedding
and decoder call it makes runs on its one ``ComputeThread`` (``annotate.model.compute``: why one), a person's
prompt first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from medsamkit.annotate.model.answers import Answer, AnswerMemory, ViewKey
from medsamkit.annotate.model.compute import BACKGROUND, WANTED, ComputeThread
from medsamkit.core.errors import InputError
from medsamkit.embedding.cache import EmbeddingCache, encoder_fingerprint
from medsamkit.models.finetuned import ClassHeadMaskDecoder
from medsamkit.models.loading import load_model, weights_identity
from medsamkit.models.sam import SamFamilyModel
from medsamkit.predictor import Embedding, Prediction, Predictor
from medsamkit.prompts.clicks import ClickAnswerer
from medsamkit.prompts.search_settings import SearchSettings
from medsamkit.prompts.simulate import Prompt
from medsamkit.samaug.everything import EverythingConfig, MaskRecord, generate_masks
from medsamkit.training.objective import decode_all, prompt_tensors

T = TypeVar("T")


class Segmenter:
    """One model for the session: embeddings by view, answers to prompts, everything mode, class suggestions."""

    def __init__(self, model: SamFamilyModel, cache_folder: str | Path, identity: dict, keep: int = 16,
                 clicks: str = "auto", search: SearchSettings | None = None, box_output: str = "single",
                 compute: ComputeThread | None = None) -> None:
        self._model = model.eval()
        self._identity = dict(identity)
        self.generation = 0  # counts hot swaps: answers of an earlier model must not prompt this one
        self.predictor = Predictor(model)
        self._clicks, self._search, self._box_output = clicks, search, box_output
        self._answerer = ClickAnswerer(self.predictor, clicks, search, box_output=box_output)
        self._cache = EmbeddingCache(cache_folder, model)
        self._worker = compute or ComputeThread("model")
        self._futures: OrderedDict[ViewKey, Future] = OrderedDict()
        self._decode = threading.Lock()  # the predictor's one embedding slot, and which model is served
        self._queue = threading.Lock()  # futures and prefetch queue: opening a view never waits for a decode
        self._keep = keep
        self._prefetch: deque = deque()  # (source, pixels) embedded when the worker has nothing else to do

    @classmethod
    def load(cls, name: str, checkpoint: str | None, device, cache_folder: str | Path,
             clicks: str = "auto", search: SearchSettings | None = None, box_output: str = "single") -> Segmenter:
        """Load the model by registry name or fine-tuned run and open the cache; ``clicks``: the click
        strategy (``prompts.clicks``), ``search``: the click search's settings (default: the hand-set),
        ``box_output``: which output answers a box alone (``prompts.boxes``). The model is loaded on the
        session's compute thread: no other thread of the server then runs torch (``annotate.model.compute``)."""
        compute = ComputeThread("model")
        model = compute.call(load_model, name, checkpoint, device)
        return cls(model, cache_folder, weights_identity(name, checkpoint), clicks=clicks, search=search,
                   box_output=box_output, compute=compute)

    # --- what it serves ------------------------------------------------------------------------------
    def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the session's compute thread, waited for (after the prompts already queued): everything
        mode, a propagation run, a 3D engine step."""
        return self._worker.call(fn, *args, priority=WANTED)

    @property
    def model(self) -> SamFamilyModel:
        """The model being served."""
        return self._model

    @property
    def identity(self) -> dict:
        """The served model's name, weights sha256 and version, as every record carries it."""
        return dict(self._identity)

    @property
    def cache(self) -> EmbeddingCache:
        """The embedding cache of the served model's encoder."""
        return self._cache

    @property
    def point_prompts(self) -> bool:
        """Whether the model answers point prompts without a box."""
        return bool(self._model.point_prompts)

    @property
    def click_strategy(self) -> str:
        """How clicks are answered: ``native`` (the decoder reads them), ``search`` or ``mixed``
        (``prompts.clicks``)."""
        return self._answerer.strategy

    @property
    def class_names(self) -> list[str]:
        """Classes of the model's class head (empty without one)."""
        return list(self._model.class_names)

    @property
    def input_size(self) -> int:
        """The model's square input side in pixels."""
        return int(self._model.preprocessing.input_size)

    # --- embeddings ----------------------------------------------------------------------------------
    def embedding(self, key: ViewKey, pixels: np.ndarray) -> Future:
        """The embedding of a view as a future (queued on the compute thread when new; cached on disk)."""
        with self._queue:
            future = self._futures.get(key)
            if future is None or future.cancelled() or (future.done() and future.exception() is not None):
                future = self._worker.submit(self._cache.get_or_compute, self.predictor, pixels, key[0],
                                             priority=WANTED)
                self._futures[key] = future
            self._futures.move_to_end(key)
            while len(self._futures) > self._keep:
                self._futures.popitem(last=False)
        return future

    def prefetch(self, views: list[tuple[str, np.ndarray]]) -> None:
        """Embed ``views`` (source name, pixels) into the disk cache in the background, one worker task at a
        time, so a person's own request waits for one of them at most (the tiles of a large 2D image)."""
        with self._queue:
            idle = not self._prefetch
            self._prefetch.extend(views)
        if idle and views:
            self._worker.submit(self._prefetch_one, priority=BACKGROUND)

    @property
    def prefetching(self) -> int:
        """Views still queued for background embedding."""
        with self._queue:
            return len(self._prefetch)

    def wait_idle(self) -> None:
        """Block until the compute thread has finished the embeddings queued before this call."""
        self._worker.submit(lambda: None, priority=BACKGROUND).result()

    def _prefetch_one(self) -> None:
        with self._queue:
            if not self._prefetch:
                return
            source, pixels = self._prefetch.popleft()
            more = bool(self._prefetch)
        cache = self._cache
        if cache.load(cache.key(pixels)) is None:
            cache.get_or_compute(self.predictor, pixels, source)
        if more:
            try:
                self._worker.submit(self._prefetch_one, priority=BACKGROUND)
            except RuntimeError:  # the worker was shut down (close)
                pass

    # --- answers -------------------------------------------------------------------------------------
    def check_prompt(self, prompt: Prompt) -> None:
        """Refuse a prompt the model cannot answer (one line naming what to do instead)."""
        if prompt.box is None and len(prompt.points) == 0:
            raise InputError("no prompt: give a box or at least one point")

    def _ask(self, prompt: Prompt, parent: Answer | None, choice: int | None, multimask: bool) -> Prediction:
        """The model's answer to one prompt on the predictor's embedding (call with ``_decode`` held), given the
        remembered answer to its earlier clicks and the candidate the person kept of it."""
        if parent is None:
            return self._answerer.answer([prompt], multimask)
        if self._answerer.strategy == "native":
            return self._answerer.answer([prompt], multimask, mask_input=parent.logits[choice][None, None])
        kept = [(parent.masks[choice], float(parent.iou[choice]))]
        return self._answerer.answer([prompt], multimask, parents=kept)

    def answer(self, key: ViewKey, pixels: np.ndarray, prompt: Prompt, multimask: bool, mask_from: int | None,
               memory: AnswerMemory) -> Answer:
        """Candidates for ``prompt`` on a view, with the click semantics over ``memory`` (the prompt session's).

        ``mask_from``: which candidate of the remembered answer feeds its logits back (default: the best
        predicted IoU, as ``ClickSession``); the person may have picked another of the three.
        """
        self.check_prompt(prompt)
        memory.follow(self.generation)
        parent = memory.parent(key, prompt, multimask)
        choice = None if parent is None else (parent.best() if mask_from is None else int(mask_from))
        if parent is not None and not 0 <= choice < len(parent.logits):
            raise InputError(f"mask_from {choice}: the previous answer has {len(parent.logits)} candidates")
        cached = memory.get(key, prompt, multimask)
        if cached is not None and cached.mask_from == choice:
            return cached
        embedding: Embedding = self.embedding(key, pixels).result()
        pred, seconds, generation = self._worker.call(self._decode_answer, embedding, key, pixels, prompt, parent,
                                                      choice, multimask)
        answer = Answer(prompt, pred.masks[0], pred.iou[0], pred.low_res_logits[0], seconds, choice, pred.ranked)
        if generation == memory.generation:
            memory.put(key, multimask, answer)
        return answer

    def _decode_answer(self, embedding: Embedding, key: ViewKey, pixels: np.ndarray, prompt: Prompt,
                       parent: Answer | None, choice: int | None, multimask: bool) -> tuple[Prediction, float, int]:
        """``answer``'s model call on the compute thread: (prediction, seconds, the generation that answered)."""
        with self._decode:
            t0 = time.perf_counter()
            self.predictor.set_embedding(embedding, key[0], pixels)
            pred = self._ask(prompt, parent, choice, multimask)
            return pred, time.perf_counter() - t0, self.generation

    def class_probabilities(self, key: ViewKey, pixels: np.ndarray, prompt: Prompt) -> np.ndarray | None:
        """Class-head probabilities (K,) for ``prompt`` on a view; None without a class head."""
        if not isinstance(self._model.mask_decoder, ClassHeadMaskDecoder):
            return None
        return self._worker.call(self._class_logits, self.embedding(key, pixels).result(), key, prompt)

    @torch.inference_mode()
    def _class_logits(self, embedding: Embedding, key: ViewKey, prompt: Prompt) -> np.ndarray:
        with self._decode:
            self.predictor.set_embedding(embedding, key[0])
            points, boxes = prompt_tensors([prompt], self.predictor.coordinate_scale(), self.predictor.device)
            _, _, logits = decode_all(self._model, self.predictor.embedding.features, points, boxes, None)
        return torch.softmax(logits[0].float(), dim=0).cpu().numpy()

    def everything(self, pixels: np.ndarray, cfg: EverythingConfig | None = None) -> list[MaskRecord]:
        """Everything-mode proposals for a whole view (its own predictor: it embeds tile by tile)."""
        return self.run(self._everything, pixels, cfg or EverythingConfig())

    def _everything(self, pixels: np.ndarray, cfg: EverythingConfig) -> list[MaskRecord]:
        with self._decode:
            return generate_masks(Predictor(self._model), pixels, cfg)

    # --- what is served ------------------------------------------------------------------------------
    def swap(self, model: SamFamilyModel, identity: dict) -> None:
        """Serve ``model`` from now on (hot swap): a request being decoded finishes with the old model, the
        next one uses the new. Embeddings are kept when the image encoder is the same (decoder fine-tuning)."""
        model = model.eval()
        same_encoder = encoder_fingerprint(model) == encoder_fingerprint(self._model)
        predictor = Predictor(model)
        with self._decode, self._queue:
            self._model, self.predictor, self._identity = model, predictor, dict(identity)
            self._answerer = ClickAnswerer(predictor, self._clicks, self._search, box_output=self._box_output)
            self._cache = EmbeddingCache(self._cache.folder, model)
            self.generation += 1
            if not same_encoder:
                self._futures.clear()

    def relabel(self, identity: dict) -> None:
        """Record the served weights under another identity (their model version), the model unchanged."""
        with self._decode:
            self._identity = dict(identity)

    def close(self) -> None:
        """Stop the compute thread: what is queued is cancelled, a running embedding finishes."""
        with self._queue:
            self._prefetch.clear()
        self._worker.shutdown(wait=True)
