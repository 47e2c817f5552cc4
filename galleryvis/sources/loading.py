"""Loaded models: the device, the :class:`ModelAdapter` a build works with, and loading a
manifest model entry through its source (:mod:`galleryvis.sources`)."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from galleryvis.engine.changes import prepared
from galleryvis.engine.chunking import Chunking
from galleryvis.engine import model_device
from galleryvis.storage.images import central_square, fit, to_tensor
from galleryvis.sources.imagetext import ImageText
from galleryvis.sources.labels import imagenet_labels
from galleryvis.engine.layers import default_layer
from galleryvis.sources import LoadedModel, ModelError, source_for
from galleryvis.targets.detection import detections_of, limit
from galleryvis.targets import CLASS_OBJECTIVES, Class, Detection, Objective, Segment
from galleryvis.tasks import TaskError, check_model, spatial_logits

__all__ = ["ModelAdapter", "ModelError", "choose_device", "imagenet_labels", "load_model", "seeded"]


def choose_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA, else MPS, else CPU; an explicitly requested device that is absent raises."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but CUDA is not available; use \"auto\" or \"cpu\"")
    if preference == "mps" and not has_mps:
        raise ModelError("device 'mps' requested but MPS is not available; use \"auto\" or \"cpu\"")
    if preference not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unknown device {preference!r}; use auto, cpu, cuda or mps")
    return torch.device(preference)


@dataclass
class ModelAdapter(LoadedModel):
    """A loaded classifier with what the gallery needs: its source's record (model,
    fingerprint, description, preprocessing, labels) under the manifest entry's ``id`` and
    ``name``, with its ``layers`` per technique."""

    id: str = ""
    name: str = ""
    layers: dict[str, Any] = field(default_factory=dict)
    chunking: Chunking | None = None  # its chunk sizes once measured (executor.chunking_for)
    task: str = "classification"  # what it does (galleryvis.tasks): the entry's task, else inferred
    score_threshold: float = 0.0  # a detector's: detections of a lower score are ignored
    max_detections: int = 100  # a detector's: at most this many detections per image are read
    _num_classes: int | None = None
    _default_layer: str | None = None

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def module_names(self) -> set[str]:
        return {n for n, _ in self.model.named_modules() if n}

    @property
    def num_classes(self) -> int:
        if self._num_classes is None and self.task == "detection":  # boxes, not logits: its labels
            self._num_classes = len(self.labels)
        if self._num_classes is None:
            self._num_classes = int(self.confidences(torch.zeros(1, 3, self.size, self.size)).shape[1])
        return self._num_classes

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What makes an image this model's input (part of every cache key of the model): size,
        mean, std, interpolation and crop percentage."""
        return {"size": self.size, "mean": self.mean, "std": self.std, "interpolation": self.interpolation,
                "crop_pct": self.crop_pct}

    def label(self, index: int) -> str:
        """The class name of ``index`` ("class 7" when the model has no labels)."""
        return self.labels[index] if 0 <= index < len(self.labels) else f"class {index}"

    def target_label(self, index: int, confidence: float, region: Path | None = None,
                     rank: tuple[int, int] | None = None) -> str:
        """Class ``index`` as a gallery names it: its name, and for a segmentation class which
        pixels it is explained over ("person, 18 % of pixels" by its ``confidence``, the share of
        the pixels the model gives it; "dog, over the given region"); for a detector's detection
        (``rank``: its place k among the image's n kept detections) its score and place ("dog
        0.91, box 1 of 3")."""
        name = self.label(index)
        if rank is not None:
            return f"{name} {confidence:.2f}, box {rank[0]} of {rank[1]}"
        if self.task != "segmentation":
            return name
        return f"{name}, over the given region" if region is not None else f"{name}, {confidence:.0%} of pixels"

    def crop(self, img: Image.Image) -> Image.Image:
        """The crop of ``img`` the model sees (its size, crop percentage and interpolation)."""
        return fit(img, self.size, self.crop_pct, self.interpolation)

    def preprocess(self, img: Image.Image) -> Tensor:
        """The model-input crop of ``img``, normalized, as a (3, size, size) tensor."""
        return to_tensor(self.crop(img), self.mean, self.std)

    def output(self, x: Tensor) -> Any:
        """The model's raw output for a normalized batch, in eval mode (restored after), without
        autograd, on the model's device."""
        with torch.no_grad(), prepared(self.model):
            return self.model(x.to(self.device))

    def logits(self, x: Tensor) -> Tensor:
        """A classifier's logits for a normalized batch (:meth:`output`), float32 on the CPU."""
        return self.output(x).float().cpu()

    def objective(self, index: int, region: Path | None = None, text: str | None = None,
                  box: Sequence[float] | None = None) -> Objective:
        """Class ``index`` as this model's task reads it (a softmax probability for a classifier,
        over the prompts alone for an image-text model, a sigmoid for a multi-label one, the
        class's logits over its pixels for a segmentation model, a detector's detection of that
        class matching ``box``, in the model input's pixels (:class:`~galleryvis.targets.Detection`
        with the model's ``score_threshold`` and ``max_detections``; without a box its
        highest-scoring one)); ``region``: a binary image of
        the photo's size, the pixels a segmentation class is explained over instead (cropped as
        the photo is); ``text``: an image-text model's free text (:meth:`score_texts`) instead
        of a class (:class:`~galleryvis.targets.Text`)."""
        if self.task == "detection":
            return Detection(index, box, score_threshold=self.score_threshold, max_detections=self.max_detections)
        if text is not None:
            return self.model.text(text)
        if region is not None:
            return Segment(index, mask=torch.from_numpy(self.region_mask(region)))
        if self.task == "image-text":
            return Class(index, classes=self.model.classes)
        return CLASS_OBJECTIVES[self.task](index)

    def score_texts(self, texts: Sequence[str]) -> None:
        """Make an image-text model also score the free ``texts`` (after its prompts, and after
        the texts it already scores, which stay); the prompts' logits do not change."""
        new = [t for t in texts if t not in (*self.model.prompts, *self.model.texts)]
        if new:
            self.model = self.model.with_texts([*self.model.texts, *new])

    def detections(self, x: Tensor) -> list[np.ndarray]:
        """A detector's kept detections (score >= ``score_threshold``, at most ``max_detections``,
        best first) of each image of a prepared batch: (K, 6) float32 arrays of x0, y0, x1, y1 (the
        model input's pixels), score, class index."""
        out = []
        for d in detections_of(self.output(x)):
            d = d.kept(self.score_threshold, self.max_detections)
            out.append(torch.cat([d.boxes.float(), d.scores[:, None].float(), d.labels[:, None].float()], 1)
                       .cpu().numpy().astype(np.float32))
        return out

    def input_box(self, box: Sequence[float], photo: tuple[int, int]) -> tuple[float, float, float, float] | None:
        """A box ``[x0, y0, x1, y1]`` in the pixels of a photo of size ``photo`` (width, height),
        in the model input's pixels: cropped and resized as the photo is (:meth:`crop`), clipped
        to the crop; None when no part of it is in the crop."""
        left, top, right, _ = central_square(*photo, self.crop_pct)
        scale = self.size / (right - left)
        x0, x1 = (min(max((v - left) * scale, 0.0), float(self.size)) for v in (box[0], box[2]))
        y0, y1 = (min(max((v - top) * scale, 0.0), float(self.size)) for v in (box[1], box[3]))
        return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None

    def photo_box(self, box: Sequence[float], photo: tuple[int, int]) -> tuple[float, float, float, float]:
        """A box ``(x0, y0, x1, y1)`` in the model input's pixels, in the pixels of a photo of size
        ``photo`` (width, height): where the photo's crop (:meth:`crop`) puts it, the inverse of
        :meth:`input_box`."""
        left, top, right, _ = central_square(*photo, self.crop_pct)
        f = (right - left) / self.size  # photo pixels per input pixel
        return left + box[0] * f, top + box[1] * f, left + box[2] * f, top + box[3] * f

    def region_mask(self, region: Path) -> np.ndarray:
        """A region file (a binary image of the photo's size) cropped as the photo is: a boolean
        (size, size) array, True where the cropped mask is at least half white."""
        with Image.open(region) as img:
            return self.crop_mask(img)

    def crop_mask(self, mask: Image.Image) -> np.ndarray:
        """A binary image of the photo's size cropped as the photo is (:meth:`crop`): a boolean
        (size, size) array, True where the cropped mask is at least half white."""
        return np.asarray(self.crop(mask.convert("L"))) >= 128

    def label_map(self, x: Tensor) -> Tensor:
        """A segmentation model's predicted class of every pixel of a normalized batch: the argmax
        over classes at the model's resolution, upsampled (nearest pixel centre) to the input's
        size; (N, H, W) int64 on the CPU."""
        scores = spatial_logits(self.output(x))
        labels = scores.argmax(1, keepdim=True).float()
        return F.interpolate(labels, size=tuple(x.shape[-2:]), mode="nearest-exact")[:, 0].long().cpu()

    def confidences(self, x: Tensor) -> Tensor:
        """Every class's confidence (a segmentation model: its share of the pixels) for a
        normalized batch, (N, classes), float32 on the CPU."""
        out = self.output(x)
        if self.task == "image-text":
            out = out[:, :self.model.classes]  # the prompts: free texts are no classes
        return CLASS_OBJECTIVES[self.task].probabilities(out).float().cpu()

    def top1(self, confidences: Tensor) -> int:
        """The class a ``"top1"`` target explains, from one image's :meth:`confidences`."""
        return int(CLASS_OBJECTIVES[self.task].top1(confidences[None])[0])

    def default_layer(self) -> str:
        """The last convolutional block (probe forward), cached."""
        if self._default_layer is None:
            self._default_layer = default_layer(self.model, torch.zeros(1, 3, self.size, self.size, device=self.device))
        return self._default_layer

    def layer_for(self, technique: str) -> Any:
        """The manifest's layer for ``technique``, else None (the engine's default)."""
        return self.layers.get(technique)


def _read_labels(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"{what}: cannot read labels file {str(path)!r}: {exc.strerror}") from None
    if path.suffix == ".json":
        data = json.loads(text)
        return [str(v) for v in (data if isinstance(data, list) else [data[k] for k in sorted(data, key=int)])]
    return [line.strip() for line in text.splitlines() if line.strip()]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Inside, torch's CPU random generator starts from ``seed``; after, it is as it was, so a
    model built inside initializes the same every time and no caller's random stream moves."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def load_model(spec: Any, base: Path, device: torch.device, what: str = "model") -> ModelAdapter:
    """Build the model a manifest ``ModelSpec`` describes (through the source that handles it,
    under :func:`seeded` ``spec.seed``) and move it to ``device``.

    ``spec`` has ``name``, ``weights``, ``factory``, ``seed``, ``labels``, ``size``, ``mean``,
    ``std``, ``layers``, ``id`` and ``prompts`` (image-text models only, refused for others);
    relative paths resolve against ``base``; the entry's ``labels``, ``size``, ``mean`` and
    ``std`` override what the source says.
    """
    with seeded(spec.seed):
        loaded = source_for(spec).load(spec, base, what)
    if spec.prompts is not None and not isinstance(loaded.model, ImageText):
        raise ModelError(f"{what}: prompts are for image-text models (open_clip, Hugging Face CLIP / SigLIP); "
                         f"{spec.name} is not one")
    try:
        task = check_model(spec.task, loaded.model, what)
    except TaskError as exc:
        raise ModelError(str(exc)) from None
    limits = {k: getattr(spec, k, None) for k in ("score_threshold", "max_detections")}
    reads = {k: v for k, v in limits.items() if v is not None}
    given = next((k for k, v in limits.items() if v is not None), None)
    if given is not None and task != "detection":
        raise ModelError(f"{what}: {given} is for detection models; {spec.name} is a {task} model")
    if given is not None:
        limit(loaded.model, **limits)
    labels = _read_labels(base / spec.labels, what) if spec.labels else list(loaded.labels)
    size, mean, std = spec.size or loaded.size, spec.mean or loaded.mean, spec.std or loaded.std
    if task == "detection" and spec.factory:  # a detector of your own normalizes inside, as torchvision's do
        mean, std = spec.mean or (0.0, 0.0, 0.0), spec.std or (1.0, 1.0, 1.0)
    transform = getattr(loaded.model, "transform", None)
    if spec.size and task == "detection" and hasattr(transform, "min_size") and hasattr(transform, "max_size"):
        transform.min_size, transform.max_size = (int(size),), int(size)  # it sees the crop as it is
    return ModelAdapter(loaded.model.to(device).eval(), loaded.fingerprint, loaded.description, int(size),
                        tuple(mean), tuple(std), labels, loaded.pinned, loaded.crop_pct, loaded.interpolation,
                        loaded.files, loaded.random, id=spec.id, name=spec.name, layers=dict(spec.layers or {}),
                        task=task, **reads)
