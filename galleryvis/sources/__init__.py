"""Model sources, one plug-in per place models come from: :class:`ModelSource` is what each
offers (the names it knows, checking a weights spec, loading into a typed :class:`LoadedModel`).

The manifest asks them which names exist and which weights are valid; ``models.load_model``
asks them to load. :data:`SOURCES` lists them in the order they are asked: a model entry with
``factory`` goes to the factory source, one whose source (``source = "timm"``, or the name's
``timm:`` / ``hf:`` prefix) is timm or Hugging Face to that source, a bundled name to the
bundled one, anything else to torchvision.
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
    source: str | None


#: The manifest's ``source`` values; torchvision (with the bundled models) is the default.
SOURCE_NAMES = ("torchvision", "timm", "huggingface")
#: Name prefixes that choose a source: ``timm:vit_base_patch16_224``, ``hf:google/vit-base-patch16-224``.
PREFIXES = {"timm": "timm", "hf": "huggingface"}


def prefixed_source(name: str) -> str | None:
    """The source a name's prefix chooses (``timm:`` / ``hf:``), else None."""
    head, sep, _ = name.partition(":")
    return PREFIXES.get(head) if sep else None


def bare_name(name: str) -> str:
    """``name`` without its source prefix."""
    return name.partition(":")[2] if prefixed_source(name) else name


def source_of(spec: Spec) -> str:
    """The source an entry chose: its ``source``, else its name's prefix, else torchvision."""
    return spec.source or prefixed_source(spec.name) or "torchvision"


@dataclass
class LoadedModel:
    """A model as its source built it: the module, what identifies its weights (part of every
    cache key: a weights file's hash, a weights name, or the hash of the state dict where
    neither pins them), a description for the gallery, its preprocessing, class names and files.
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
    crop_pct: float = 1.0  # the central square's side over the image's shorter side
    interpolation: str = "bicubic"  # how that square is resized to ``size``
    files: tuple[Path, ...] = ()  # the local files it was built from (a build's stamp watches them)


class ModelSource(Protocol):
    """One place models come from."""

    #: the source's name, in messages
    name: str

    def handles(self, spec: Spec) -> bool:
        """Whether this source builds ``spec`` (by its ``factory`` or ``name``)."""

    def names(self) -> tuple[str, ...]:
        """Every model name this source knows (empty for sources that take code, not names)."""

    def knows(self, name: str) -> bool:
        """Whether ``name`` (without its source prefix) is a model this source can build."""

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
    from .huggingface import HuggingFaceSource
    from .timm import TimmSource
    from .torchvision import TorchvisionSource

    return (FactorySource(), TimmSource(), HuggingFaceSource(), BundledSource(), TorchvisionSource())


#: The sources, in the order they are asked.
SOURCES: Sequence[ModelSource] = _sources()


def source_for(spec: Spec) -> ModelSource:
    """The first source that handles ``spec``."""
    return next(s for s in SOURCES if s.handles(spec))

