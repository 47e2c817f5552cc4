"""Model loading: torchvision names and weights, the bundled EfficientNet-Lite0, user factories."""
from __future__ import annotations

import functools
import importlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch import Tensor, nn

from .engine import IMAGENET_MEAN, IMAGENET_STD
from .images import file_sha256, fit, to_tensor
from .layers import default_layer
from .manifest import BUNDLED_MODELS, known_models
from .registry import suggest


class ModelError(ValueError):
    """A model that cannot be built or loaded; the message says which and how to fix it."""


@functools.cache
def _labels() -> tuple[str, ...]:
    return tuple(json.loads((Path(__file__).parent / "data" / "imagenet_classes.json").read_text("utf-8"))["labels"])


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names as torchvision ships them, read from a copy in the package:
    torchvision is imported only for torchvision models (its import takes over a second)."""
    return list(_labels())


def choose_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA, else MPS, else CPU; an explicitly requested device that is absent raises."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but CUDA is not available; use device = \"auto\" or \"cpu\"")
    if preference == "mps" and not has_mps:
        raise ModelError("device 'mps' requested but MPS is not available; use device = \"auto\" or \"cpu\"")
    if preference not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unknown device {preference!r}; use auto, cpu, cuda or mps")
    return torch.device(preference)


@dataclass
class ModelAdapter:
    """A loaded classifier with what the gallery needs: preprocessing, labels, layers, identity."""

    id: str
    name: str
    model: nn.Module
    description: str
    fingerprint: str
    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    labels: list[str] = field(default_factory=list)
    layers: dict[str, Any] = field(default_factory=dict)
    _num_classes: int | None = None
    _default_layer: str | None = None

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def module_names(self) -> set[str]:
        return {n for n, _ in self.model.named_modules() if n}

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = int(self.logits(torch.zeros(1, 3, self.size, self.size)).shape[1])
        return self._num_classes

    def label(self, index: int) -> str:
        """The class name of ``index`` ("class 7" when the model has no labels)."""
        return self.labels[index] if 0 <= index < len(self.labels) else f"class {index}"

    def preprocess(self, img: Image.Image) -> Tensor:
        """The model-input crop of ``img``, normalized, as a (3, size, size) tensor."""
        return to_tensor(fit(img, self.size), self.mean, self.std)

    def logits(self, x: Tensor) -> Tensor:
        """Logits for a normalized batch, in eval mode, without autograd."""
        with torch.no_grad():
            self.model.eval()
            return self.model(x.to(self.device)).float().cpu()

    def default_layer(self) -> str:
        """The last convolutional block (probe forward), cached."""
        if self._default_layer is None:
            self._default_layer = default_layer(self.model, torch.zeros(1, 3, self.size, self.size, device=self.device))
        return self._default_layer

    def layer_for(self, technique: str) -> Any:
        """The manifest's layer for ``technique``, else None (the engine's default)."""
        return self.layers.get(technique)


def load_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """A state dict from a local file, with ``weights_only=True``: pickled code is refused."""
    if not path.is_file():
        raise ModelError(f"{what}: weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{what}: refusing to load {str(path)!r}: not a plain tensor state dict "
                         f"(torch.load weights_only=True said: {first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{what}: {str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def _load_into(model: nn.Module, path: Path, what: str) -> None:
    try:
        model.load_state_dict(load_state_dict(path, what))
    except RuntimeError as exc:
        raise ModelError(f"{what}: {str(path)!r} does not fit the architecture: "
                         f"{str(exc).strip().splitlines()[0]}") from None


def _is_path(weights: str) -> bool:
    return weights.endswith((".pth", ".pt", ".bin")) or "/" in weights or "\\" in weights


def _torchvision(name: str, weights: str | None, base: Path, what: str) -> tuple[nn.Module, dict[str, Any]]:
    import torchvision

    if name not in known_models():  # bundled names never come here
        raise ModelError(f"{what}: unknown model {name!r}{suggest(name, list(known_models()))}")
    info: dict[str, Any] = {"size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "labels": imagenet_labels()}
    if weights is None or weights.lower() == "none":
        return torchvision.models.get_model(name, weights=None), {**info, "fingerprint": "random-init", "desc": "random weights"}
    if _is_path(weights):
        path = (base / weights).expanduser()
        model = torchvision.models.get_model(name, weights=None)
        _load_into(model, path, what)
        return model, {**info, "fingerprint": file_sha256(path), "desc": f"weights from {path.name}"}
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
    crop = w.transforms().crop_size[0] if hasattr(w.transforms(), "crop_size") else 224
    t = w.transforms()
    return model, {
        "size": int(crop), "mean": tuple(getattr(t, "mean", IMAGENET_MEAN)), "std": tuple(getattr(t, "std", IMAGENET_STD)),
        "labels": list(w.meta.get("categories") or imagenet_labels()), "fingerprint": str(w), "desc": f"torchvision {w}",
    }


def _factory(spec: str, what: str) -> Callable[[], nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"{what}: factory must look like 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{what}: cannot import factory {spec!r}: {exc}") from None
    return fn


def _read_labels(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"{what}: cannot read labels file {str(path)!r}: {exc.strerror}") from None
    if path.suffix == ".json":
        data = json.loads(text)
        return [str(v) for v in (data if isinstance(data, list) else [data[k] for k in sorted(data, key=int)])]
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_model(spec: Any, base: Path, device: torch.device, what: str = "model") -> ModelAdapter:
    """Build the model a manifest ``ModelSpec`` describes and move it to ``device``.

    ``spec`` has ``name``, ``weights``, ``factory``, ``labels``, ``size``, ``mean``, ``std``,
    ``layers`` and ``id``; relative paths resolve against ``base``.
    """
    info: dict[str, Any] = {"size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "labels": []}
    weights = spec.weights
    if spec.factory:
        model = _factory(spec.factory, what)()
        if not isinstance(model, nn.Module):
            raise ModelError(f"{what}: factory {spec.factory!r} returned {type(model).__name__}, not an nn.Module")
        fingerprint, desc = f"factory:{spec.factory}", f"{spec.factory}"
        if weights and weights.lower() != "none":
            path = (base / weights).expanduser()
            _load_into(model, path, what)
            fingerprint += ":" + file_sha256(path)
            desc += f" with weights from {path.name}"
        info.update(fingerprint=fingerprint, desc=desc)
    elif spec.name in BUNDLED_MODELS:
        from .lite0 import efficientnet_lite0, weights_path

        pretrained = weights is None or weights.upper() == "DEFAULT"
        model = efficientnet_lite0(pretrained=pretrained)
        info["labels"] = imagenet_labels()
        if pretrained:
            info.update(fingerprint=file_sha256(weights_path()), desc="EfficientNet-Lite0, ImageNet weights (bundled)")
        elif weights.lower() == "none":
            info.update(fingerprint="random-init", desc="EfficientNet-Lite0, random weights")
        else:
            path = (base / weights).expanduser()
            _load_into(model, path, what)
            info.update(fingerprint=file_sha256(path), desc=f"EfficientNet-Lite0, weights from {path.name}")
    else:
        model, tv = _torchvision(spec.name, weights, base, what)
        info.update(tv)
    if spec.labels:
        info["labels"] = _read_labels(base / spec.labels, what)
    for key in ("size", "mean", "std"):
        if getattr(spec, key, None):
            info[key] = getattr(spec, key)
    model = model.to(device).eval()
    return ModelAdapter(
        id=spec.id, name=spec.name, model=model, description=info["desc"], fingerprint=info["fingerprint"],
        size=int(info["size"]), mean=tuple(info["mean"]), std=tuple(info["std"]), labels=list(info["labels"]),
        layers=dict(spec.layers or {}),
    )
