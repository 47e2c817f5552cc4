"""Ultralytics YOLO detectors (optional extra ``galleryvis[yolo]``): ``ultralytics:<model>`` or
``source = "ultralytics"``, any Ultralytics model whose head is ``Detect`` (``yolov8n``,
``yolo11s``, ``yolov5n-p6``, ...). Weights: a local checkpoint ``.pt`` (as Ultralytics saves
it, read with ``torch.load(weights_only=True)`` allowing only Ultralytics' and torch's modules),
a plain state dict (``.safetensors`` too), ``DEFAULT`` (``<model>.pt`` beside the manifest) or
``none`` (random weights from the model's config); never downloaded. The model is Ultralytics'
``DetectionModel`` itself (its layer names are ``model.0`` ... ``model.22``), taking pixels in
[0, 1] at sides that are multiples of its stride (32); class names from the checkpoint, COCO's
80 for an 80-class model without its own."""
from __future__ import annotations

import importlib
import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from galleryvis.storage.images import file_sha256
from galleryvis.sources import LoadedModel, ModelError, Spec, bare_name, close_names, source_of
from galleryvis.sources.weights import load_into, load_state_dict, no_named_weights, random_init

#: The plain-data classes an Ultralytics checkpoint may hold besides modules (its training arguments).
_DATA_GLOBALS = ("ultralytics.utils.IterableSimpleNamespace", "types.SimpleNamespace")
#: Where the modules of a checkpoint's model may come from.
_MODULE_PACKAGES = ("torch.nn.", "ultralytics.nn.")


def _package(what: str) -> Any:
    try:
        import ultralytics
    except ImportError:
        raise ModelError(f"{what}: Ultralytics models need ultralytics: pip install 'galleryvis[yolo]'") from None
    return ultralytics


@cache
def _configs() -> dict[str, Path]:
    """Every detection model name (a config's stem with each of its scales) -> its config file."""
    import yaml

    root = Path(_package("ultralytics").__file__).parent / "cfg" / "models"
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        head = cfg.get("head") or [[None, None, ""]]
        if head[-1][2] != "Detect":
            continue
        scales = tuple(cfg.get("scales") or ())
        for name in [re.sub(r"^(yolo(?:v)?\d+)", rf"\g<1>{s}", path.stem) for s in scales] or [path.stem]:
            out.setdefault(name, path)
    return out


def coco_names() -> list[str]:
    """COCO's 80 class names, as Ultralytics' ``coco.yaml`` lists them."""
    import yaml

    path = Path(_package("ultralytics").__file__).parent / "cfg" / "datasets" / "coco.yaml"
    names = yaml.safe_load(path.read_text(encoding="utf-8"))["names"]
    return [str(names[i]) for i in range(len(names))]


def _labels(model: nn.Module) -> list[str]:
    """The class names of ``model`` (its ``names``), COCO's where an 80-class model has only numbers."""
    names = getattr(model, "names", None) or {}
    labels = [str(names[i]) for i in range(len(names))] if isinstance(names, dict) else [str(n) for n in names]
    if len(labels) == 80 and all(n == str(i) for i, n in enumerate(labels)):
        return coco_names()
    return labels


def _allowed(qualname: str) -> Any:
    """The class ``qualname`` names where a checkpoint may hold it (a module of torch.nn or
    ultralytics.nn, or plain data), else None."""
    module, _, attr = qualname.rpartition(".")
    if qualname not in _DATA_GLOBALS and not module.startswith(_MODULE_PACKAGES):
        return None
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    ok = isinstance(found, type) and (issubclass(found, nn.Module) or qualname in _DATA_GLOBALS)
    return found if ok else None


def _checkpoint(path: Path, what: str) -> Any:
    """What an Ultralytics ``.pt`` holds, unpickled with ``weights_only=True`` and only the
    classes :func:`_allowed` names; a one-line ModelError naming any other."""
    if not path.is_file():
        raise ModelError(f"{what}: weights file {str(path)!r} does not exist")
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise ModelError(f"{what}: reading the Ultralytics checkpoint {str(path)!r} safely needs torch >= 2.5")
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:  # noqa: BLE001  (not a zip checkpoint: torch's own message)
        raise ModelError(f"{what}: cannot read {str(path)!r} as a torch checkpoint: {exc}") from None
    classes = {n: _allowed(n) for n in needed}
    refused = sorted(n for n, c in classes.items() if c is None)
    if refused:
        raise ModelError(f"{what}: refusing to load {str(path)!r}: it holds {refused[0]}, neither a module of "
                         f"torch.nn or ultralytics.nn nor plain data")
    try:
        with torch.serialization.safe_globals(list(classes.values())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (unpickling errors of every kind)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{what}: cannot load {str(path)!r}: {first}") from None


class UltralyticsSource:
    """Ultralytics detection models by name: weights a local checkpoint, ``DEFAULT``
    (``<model>.pt`` beside the manifest) or ``none``."""

    name = "ultralytics"
    usage = ('name = "ultralytics:yolov8n" (any Ultralytics detection model): weights = "yolov8n.pt", a local '
             'checkpoint (never downloaded; default: NAME.pt beside the manifest), or "none" for random weights')

    def handles(self, spec: Spec) -> bool:
        return not spec.factory and source_of(spec) == "ultralytics"

    def names(self) -> tuple[str, ...]:
        return tuple(_configs()) if not self.missing() else ()

    def knows(self, name: str) -> bool:
        """Whether ``name`` is an Ultralytics detection model (any name without ultralytics:
        loading it then says what to install)."""
        return bool(self.missing()) or name in _configs()

    def offline(self) -> frozenset[str]:
        """The models whose default weights, ``NAME.pt``, are in the current folder."""
        return frozenset(n for n in self.names() if Path(f"{n}.pt").is_file())

    def missing(self) -> str:
        return "" if importlib.util.find_spec("ultralytics") else "pip install 'galleryvis[yolo]'"

    def check_weights(self, name: str, weights: str) -> str:
        return no_named_weights(f"Ultralytics model {name}", weights)

    def load(self, spec: Spec, base: Path, what: str) -> LoadedModel:
        _package(what)
        from ultralytics.nn.tasks import DetectionModel

        name, weights = bare_name(spec.name), spec.weights
        if name not in _configs():
            raise ModelError(f"{what}: unknown Ultralytics detection model {name!r}"
                             f"{close_names(name, 'ultralytics')}")
        size: dict[str, Any] = {"size": 640, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
        if weights is not None and weights.lower() == "none":
            model = DetectionModel(f"{name}.yaml", verbose=False)
            return LoadedModel(model.eval(), random_init(model, spec.seed),
                               f"Ultralytics {name}, random weights (seed {spec.seed})", labels=_labels(model),
                               random=True, **size)
        path = (base / (weights if weights and weights.upper() != "DEFAULT" else f"{name}.pt")).expanduser()
        if (weights is None or weights.upper() == "DEFAULT") and not path.is_file():
            raise ModelError(f"{what}: no {path.name} beside the manifest ({str(path)!r}); Ultralytics models "
                             f'are never downloaded: set weights to a local .pt, or "none"')
        held = load_state_dict(path, what) if path.suffix == ".safetensors" else _checkpoint(path, what)
        model = (held.get("ema") or held.get("model")) if isinstance(held, dict) else held
        if isinstance(model, nn.Module):
            model = model.float()
        elif isinstance(held, dict) and all(isinstance(v, torch.Tensor) for v in held.values()):
            model = DetectionModel(f"{name}.yaml", verbose=False)
            load_into(model, path, what)
        else:
            raise ModelError(f"{what}: {str(path)!r} holds neither an Ultralytics model nor a state dict")
        if type(model) is not DetectionModel:
            raise ModelError(f"{what}: {str(path)!r} holds a {type(model).__name__}, not a DetectionModel")
        return LoadedModel(model.eval(), file_sha256(path), f"Ultralytics {name}, weights from {path.name}",
                           labels=_labels(model), files=(path,), **size)
