"""What propagation and learning may use of the session's model (``ModelHost``; the ``Segmenter`` is the one
host), and the model a session was launched with (``ModelLaunch``: what a learn round starts from and
version 0 reloads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from medsamkit.embedding.cache import EmbeddingCache
from medsamkit.models.loading import base_model, load_model, weights_identity
from medsamkit.models.sam import SamFamilyModel


class ModelHost(Protocol):
    """The served model, its identity and embedding cache, and the two ways to change what is served."""

    @property
    def model(self) -> SamFamilyModel:
        """The model being served."""

    @property
    def identity(self) -> dict:
        """Its name, weights sha256 and version."""

    @property
    def cache(self) -> EmbeddingCache:
        """The embedding cache of its encoder (on disk under --out)."""

    @property
    def click_strategy(self) -> str:
        """How it answers clicks: ``native``, ``search`` or ``mixed`` (``prompts.clicks``)."""

    def swap(self, model: SamFamilyModel, identity: dict) -> None:
        """Serve ``model`` from now on."""

    def relabel(self, identity: dict) -> None:
        """Name the served weights differently (a model version), the model unchanged."""


@dataclass(frozen=True)
class ModelLaunch:
    """``--model``, ``--checkpoint`` and ``--device`` of the session."""

    name: str = "litemedsam"
    checkpoint: str | None = None
    device: str | None = None

    def load(self) -> SamFamilyModel:
        """The launch model, loaded again."""
        return load_model(self.name, self.checkpoint, self.device)

    @property
    def identity(self) -> dict:
        """Its name and weights sha256."""
        return weights_identity(self.name, self.checkpoint)

    def base(self) -> tuple[str, str | None, str | None]:
        """(registry base, its checkpoint, fine-tuned weights file or None) a learn round starts from."""
        return base_model(self.name, self.checkpoint)
