"""Model sources, one plug-in per place models come from: :class:`ModelSource` is what each
offers (the names it knows, checking a weights spec, loading into a typed :class:`LoadedModel`).

The manifest asks them which names exist and which weights are valid; ``models.load_model``
asks them to load. :data:`SOURCES` lists them in the order they are asked: a model entry with
``factory`` goes to the factory source, one whose source (``source = "timm"``, or the name's
``timm:`` / ``hf:`` / ``open_clip:`` / ``ultralytics:`` prefix) is timm, Hugging Face, open_clip or
Ultralytics to that source,
a bundled name to the bundled one, anything else to torchvision.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol, Sequence

from torch import nn

from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD
from galleryvis.errors import ModelError
from galleryvis.registry import suggest


class Spec(Protocol):
    """What a source reads of a manifest model entry (``manifest.ModelSpec``)."""

    name: str
    weights: str | None
    factory: str | None
    seed: int
    source: str | None
    #: an image-text model's prompts: a list of texts, "imagenet", or None (ImageNet's)
    prompts: tuple[str, ...] | str | None


#: The manifest's ``source`` values; torchvision (with the bundled models) is the default.
SOURCE_NAMES = ("torchvision", "timm", "huggingface", "open_clip", "ultralytics")
#: Name prefixes that choose a source: ``timm:vit_base_patch16_224``, ``hf:google/vit-base-patch16-224``.
PREFIXES = {"timm": "timm", "hf": "huggingface", "open_clip": "open_clip", "ultralytics": "ultralytics"}


def prefixed_source(name: str) -> str | None:
    """The source a name's prefix chooses (``timm:`` / ``hf:`` / ``open_clip:`` / ``ultralytics:``), else None."""
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
    False for a factory without a weights file, whose weights only its result shows.
    ``random``: weights ``none`` (random initialization); a factory's model is whatever its
    code made, so never marked."""

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
    random: bool = False  # randomly initialized (weights "none"): its predictions mean nothing


class ModelSource(Protocol):
    """One place models come from."""

    #: the source's name, in messages
    name: str
    #: how a manifest names this source's models and points at local weights (``galleryvis models``)
    usage: str

    def handles(self, spec: Spec) -> bool:
        """Whether this source builds ``spec`` (by its ``factory`` or ``name``)."""

    def names(self) -> tuple[str, ...]:
        """Every model name this source knows (empty for sources that take code, not names)."""

    def knows(self, name: str) -> bool:
        """Whether ``name`` (without its source prefix) is a model this source can build."""

    def offline(self) -> frozenset[str]:
        """The names (without prefix) whose default weights load here without the network."""

    def missing(self) -> str:
        """'' when this source can load models here, else how to install what it needs."""

    def check_weights(self, name: str, weights: str) -> str:
        """``weights`` that are neither ``DEFAULT``, ``none`` nor a file path, normalized (an
        enum member name); raises ModelError saying what is wrong."""

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        """Build the model of ``spec``; relative paths resolve against ``base``; ``what``
        prefixes messages (``"m.toml: models[0]"``). ``models.load_model`` calls it with torch's
        random generator seeded from ``spec.seed``, so a random initialization is reproducible."""


def _sources() -> Sequence[ModelSource]:
    from galleryvis.sources.bundled import BundledSource
    from galleryvis.sources.factory import FactorySource
    from galleryvis.sources.huggingface import HuggingFaceSource
    from galleryvis.sources.open_clip import OpenClipSource
    from galleryvis.sources.timm import TimmSource
    from galleryvis.sources.torchvision import TorchvisionSource
    from galleryvis.sources.ultralytics import UltralyticsSource

    return (FactorySource(), TimmSource(), HuggingFaceSource(), OpenClipSource(), UltralyticsSource(), BundledSource(),
            TorchvisionSource())


def source_for(spec: Spec) -> ModelSource:
    """The first source that handles ``spec``."""
    return next(s for s in SOURCES if s.handles(spec))


#: The order ``galleryvis models`` lists the sources in: the models that work offline first.
LISTED = ("bundled", "torchvision", "timm", "huggingface", "open_clip", "ultralytics", "factory")


def listed() -> list[ModelSource]:
    """The sources in :data:`LISTED` order."""
    by_name = {s.name: s for s in SOURCES}
    return [by_name[name] for name in LISTED]


class _Named(NamedTuple):
    """A model entry that has only a name (and maybe a source)."""

    name: str
    source: str | None = None
    weights: str | None = None
    factory: str | None = None
    seed: int = 0
    prompts: tuple[str, ...] | str | None = None


def known(name: str, source: str | None = None) -> bool:
    """Whether the source that would build a model called ``name`` knows it."""
    return source_for(_Named(name, source)).knows(bare_name(name))


def close_names(name: str, source: str | None = None) -> str:
    """' (did you mean: ...?)' for an unknown model ``name``: close names of the source that
    would build it (torchvision's with the bundled ones, which share its names), those that load
    offline ranked first (``efficientnet_lite`` -> ``efficientnet_lite0``)."""
    chosen = source_for(_Named(name, source)).name
    family = ("bundled", "torchvision") if chosen in ("bundled", "torchvision") else (chosen,)
    pool = [s for s in listed() if s.name in family]
    return suggest(bare_name(name), [n for s in pool for n in s.names()],
                   first=frozenset().union(*(s.offline() for s in pool)))



#: The sources, in the order they are asked (last: their modules import the helpers above).
SOURCES: Sequence[ModelSource] = _sources()
