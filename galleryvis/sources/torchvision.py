"""torchvision's classification, segmentation and detection models: names, weights enums, hub-cache downloads."""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch

from galleryvis.engine import IMAGENET_MEAN, IMAGENET_STD
from galleryvis.storage.images import file_sha256
from galleryvis.sources.labels import imagenet_labels
from galleryvis.registry import suggest
from galleryvis.tasks import TORCHVISION_SEGMENTATION
from galleryvis.sources import LoadedModel, ModelError, Spec, close_names, source_of
from galleryvis.sources.weights import is_path, load_into, random_init


@cache
def _names() -> tuple[str, ...]:
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)
                        + torchvision.models.list_models(module=torchvision.models.segmentation)
                        + list(_detectors())))


@cache
def _detectors() -> tuple[str, ...]:
    """torchvision's detectors (``torchvision.models.detection``: Faster / Mask / Keypoint
    R-CNN, RetinaNet, FCOS, SSD, SSDlite)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models.detection))


def _build(name: str, weights: object) -> torch.nn.Module:
    """torchvision's ``name`` with ``weights``; a segmentation model or detector without them
    gets no backbone weights either (torchvision would download ImageNet ones)."""
    import torchvision

    extra = {"weights_backbone": None} if weights is None and (
        name.startswith(TORCHVISION_SEGMENTATION) or name in _detectors()) else {}
    return torchvision.models.get_model(name, weights=weights, **extra)


def _labels(name: str) -> list[str]:
    """The class names of ``name`` without weights: ImageNet's, or a segmentation model's or
    detector's (the categories of its default weights: Pascal VOC's 21, COCO's 91 with
    ``__background__`` and ``N/A`` at the indices COCO leaves out)."""
    import torchvision

    if name.startswith(TORCHVISION_SEGMENTATION) or name in _detectors():
        return list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])
    return imagenet_labels()


def _detector_input(model: torch.nn.Module) -> dict[str, Any]:
    """A detector's preprocessing: pixels in [0, 1] (its transform normalizes inside, so the
    adapter must not), the shorter side its transform resizes to as ``size``."""
    return {"size": int(model.transform.min_size[0]), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


@cache
def _weights_enum(name: str) -> tuple[str, tuple[str, ...]]:
    """(enum class name, member names) of a model's weights."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    return enum.__name__, tuple(enum.__members__)


class TorchvisionSource:
    """Any torchvision classification, segmentation (``fcn_*``, ``deeplabv3_*``, ``lraspp_*``)
    or detection model (``fasterrcnn_*``, ``maskrcnn_*``, ``retinanet_*``, ``fcos_*``, ``ssd*``) by name; weights ``DEFAULT``, an enum member (``IMAGENET1K_V2``), ``none`` or
    a local file."""

    name = "torchvision"
    usage = ('name = "resnet50": weights = "DEFAULT" (or an enum name) download once into the torch hub cache '
             '(TORCH_HOME, default ~/.cache/torch/hub/checkpoints); weights = "file.pth" for local ones')

    def handles(self, spec: Spec) -> bool:
        return not spec.factory and source_of(spec) == "torchvision"

    def names(self) -> tuple[str, ...]:
        return _names()

    def knows(self, name: str) -> bool:
        return name in _names()

    def offline(self) -> frozenset[str]:
        """The models whose default weights are in the torch hub cache."""
        import torchvision

        cached = {p.name for p in (Path(torch.hub.get_dir()) / "checkpoints").glob("*")}
        return frozenset(n for n in _names()
                         if Path(torchvision.models.get_model_weights(n).DEFAULT.url).name in cached)

    def missing(self) -> str:
        return ""

    def check_weights(self, name: str, weights: str) -> str:
        enum, members = _weights_enum(name)
        prefix, _, member = weights.rpartition(".")
        if prefix and prefix != enum:
            raise ModelError(f"{weights!r} are not weights for {name} (they are {enum}.*)")
        if member not in members:
            raise ModelError(f"unknown weights {weights!r} for {name}{suggest(member, members)}; "
                             f'known: {", ".join(members)}, "none" or a .pth path')
        return member

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        import torchvision

        name, weights = spec.name, spec.weights
        if name not in _names():
            raise ModelError(f"{what}: unknown model {name!r}{close_names(name)}")
        labels = _labels(name)
        if weights is None or weights.lower() == "none":
            model = _build(name, None)
            extra = _detector_input(model) if name in _detectors() else {}
            return LoadedModel(model, random_init(model, spec.seed), f"random weights (seed {spec.seed})",
                               labels=labels, random=True, **extra)
        if is_path(weights):
            path = (base / weights).expanduser()
            model = _build(name, None)
            load_into(model, path, what)
            extra = _detector_input(model) if name in _detectors() else {}
            return LoadedModel(model, file_sha256(path), f"weights from {path.name}", labels=labels, files=(path,),
                               **extra)
        enum = torchvision.models.get_model_weights(name)
        options = ["DEFAULT"] + [w.name for w in enum]
        key = weights.split(".")[-1]
        if key not in options:
            raise ModelError(f"{what}: unknown weights {weights!r} for {name}{suggest(key, options)}; "
                             f"use one of {', '.join(options)}, a local .pth path, or \"none\"")
        w = enum.DEFAULT if key == "DEFAULT" else enum[key]
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
        try:
            model = torchvision.models.get_model(name, weights=w)
        except Exception as exc:  # noqa: BLE001  (urllib, socket and hash errors alike)
            raise ModelError(
                f"{what}: cannot fetch weights {w} ({type(exc).__name__}): torch looked for {str(cached)!r}; "
                f"offline, copy {Path(w.url).name} there (or set TORCH_HOME), or set weights to a local .pth path"
            ) from None
        if name in _detectors():
            return LoadedModel(model, f"{w}:{Path(w.url).name}", f"torchvision {w}", labels=list(w.meta["categories"]),
                               **_detector_input(model))
        t = w.transforms()
        side = getattr(t, "crop_size", None) or getattr(t, "resize_size", None)  # segmentation: resize_size
        crop = side[0] if side else 224
        return LoadedModel(model, f"{w}:{Path(w.url).name}", f"torchvision {w}", size=int(crop),
                           mean=tuple(getattr(t, "mean", IMAGENET_MEAN)), std=tuple(getattr(t, "std", IMAGENET_STD)),
                           labels=list(w.meta.get("categories") or imagenet_labels()))
