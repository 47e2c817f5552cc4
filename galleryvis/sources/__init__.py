"""Model sources, one plug-in per place models come from: :class:`ModelSource` is what each
offers (the names it knows, checking a weights spec, loading into a typed :class:`LoadedModel`).

The manifest asks them which names exist and which weights are valid; ``models.load_model``
asks them to load. :data:`SOURCES` lists them in the order they are asked: a model entry with
``factory`` goes to the factory source, a bundled name to the bundled one, anything else to
torchvision.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from torch import nn

from ..engine import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ModelError


class Spec(Protocol):
    """What a source reads of a manifest model entry (``manifest.ModelSpec``)."""

    name: str
    weights: str | None
    factory: str | None
    seed: int


@dataclass
class LoadedModel:
    """A model as its source built it: the module, what identifies its weights (part of every
    cache key: a weights file's hash, a weights name, or the hash of the state dict where
    neither pins them), a description for the gallery, its preprocessing and class names.
    ``pinned``: whether the manifest alone determines the weights (a name, a file, a seed);
    False for a factory without a weights file, whose weights only its result shows."""

    model: nn.Module
    fingerprint: str
    description: str
    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    labels: list[str] = field(default_factory=list)
    pinned: bool = True


class ModelSource(Protocol):
    """One place models come from."""

    #: the source's name, in messages
    name: str

    def handles(self, spec: Spec) -> bool:
        """Whether this source builds ``spec`` (by its ``factory`` or ``name``)."""

    def names(self) -> tuple[str, ...]:
        """Every model name this source knows (empty for sources that take code, not names)."""

    def check_weights(self, name: str, weights: str) -> str:
        """``weights`` that are neither ``DEFAULT``, ``none`` nor a file path, normalized (an
        enum member name); raises ModelError saying what is wrong."""

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        """Build the model of ``spec``; relative paths resolve against ``base``; ``what``
        prefixes messages (``"m.toml: models[0]"``). ``models.load_model`` calls it with torch's
        random generator seeded from ``spec.seed``, so a random initialization is reproducible."""


def _sources() -> Sequence[ModelSource]:
    from .bundled import BundledSource
    from .factory import FactorySource
    from .torchvision import TorchvisionSource

    return (FactorySource(), BundledSource(), TorchvisionSource())


#: The sources, in the order they are asked.
SOURCES: Sequence[ModelSource] = _sources()


def source_for(spec: Spec) -> ModelSource:
    """The first source that handles ``spec``."""
    return next(s for s in SOURCES if s.handles(spec))


def known_names() -> tuple[str, ...]:
    """Every model name some source knows."""
    return tuple(n for s in SOURCES for n in s.names())
