"""Models galleryvis ships: EfficientNet-Lite0 with ImageNet weights, offline."""
from __future__ import annotations

from pathlib import Path

from ..images import file_sha256
from ..labels import imagenet_labels
from . import LoadedModel, Spec, source_of
from .weights import load_into, no_named_weights

#: Models galleryvis ships itself, beside torchvision's classification models.
BUNDLED_MODELS: tuple[str, ...] = ("efficientnet_lite0",)


class BundledSource:
    """``efficientnet_lite0``: weights ``DEFAULT`` (bundled), ``none`` or a local file."""

    name = "bundled"

    def handles(self, spec: Spec) -> bool:
        return not spec.factory and source_of(spec) == "torchvision" and spec.name in BUNDLED_MODELS

    def names(self) -> tuple[str, ...]:
        return BUNDLED_MODELS

    def knows(self, name: str) -> bool:
        return name in BUNDLED_MODELS

    def check_weights(self, name: str, weights: str) -> str:
        return no_named_weights(name, weights)

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        from ..lite0 import efficientnet_lite0, weights_path

        weights = spec.weights
        pretrained = weights is None or weights.upper() == "DEFAULT"
        model = efficientnet_lite0(pretrained=pretrained)
        labels = imagenet_labels()
        if pretrained:
            return LoadedModel(model, file_sha256(weights_path()), "EfficientNet-Lite0, ImageNet weights (bundled)",
                               labels=labels)
        assert weights is not None
        if weights.lower() == "none":
            return LoadedModel(model, "random-init", "EfficientNet-Lite0, random weights", labels=labels)
        path = (base / weights).expanduser()
        load_into(model, path, what)
        return LoadedModel(model, file_sha256(path), f"EfficientNet-Lite0, weights from {path.name}", labels=labels,
                           files=(path,))
