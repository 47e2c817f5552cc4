"""The plan stage: every cell of a gallery as a plain, picklable :class:`Job`.

A job names what to compute (model spec, image file and hash, technique spec, resolved
parameters, layer, target, cache key) and carries its outcome (map, error, scores), never a
loaded model or a decoded image: those live in a :class:`Workspace`, which an
:class:`~galleryvis.build.executor.Executor` builds or rebuilds wherever it runs.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from PIL import Image

from galleryvis import families, registry
from galleryvis.storage.cache import Cache, cache_key
from galleryvis.storage.images import ImageError, file_sha256, load_image
from galleryvis.config.manifest import (DetectionTarget, FreeText, Manifest, ManifestError, ModelSpec, Region,
                                        TechniqueSpec, check_against_models)
from galleryvis.sources.loading import ModelAdapter, ModelError, choose_device, load_model
from galleryvis.naming import unique_slugs
from galleryvis.targets import Objective
from galleryvis.targets.detection import Detections, NotFound, pick
from galleryvis.metrics import box_mask, unknown_metrics
from galleryvis.tasks import DEFAULT_TASK


@dataclass(frozen=True)
class ImageRef:
    """An input image: its slug ``id``, file ``name``, ``path``, content ``sha`` and ``target``."""

    id: str
    name: str
    path: Path
    sha: str
    target: int | str | Region | FreeText | DetectionTarget | None = None
    mask: Path | None = None  # where the object is, for localisation metrics: a binary image of the photo's size
    box: tuple[tuple[float, float, float, float], ...] | None = None  # or its boxes, in the photo's pixels
    field: str = ""  # the manifest entry it came from, e.g. ``images[2]``


@dataclass
class Job:
    """One cell to produce, and what came of it. Plain data: it pickles, and holds no model.

    ``model`` is the manifest's model spec, ``image`` the input, ``tech`` the technique entry
    with its ``params`` resolved, ``layer`` and ``target`` as resolved for this model, ``key``
    the cache key and ``covers`` what it is the hash of (recorded in the cache entry).
    ``result`` (the raw map, or a synthesis image), ``error``, ``cached``, ``metrics``,
    ``curves``, ``trace``, ``unit`` (the channel a synthesis cell optimized), ``concepts`` (a
    concept cell's channels with their shares and drops, beside its maps) and ``seconds``
    (its share of the compute and scoring time: a pass shared by techniques is charged to the
    first that ran it, one shared by images is split evenly) are filled by the compute and
    scoring stages.
    """

    model: ModelSpec
    image: ImageRef
    tech: TechniqueSpec
    params: dict[str, Any]
    layer: Any
    target: int
    key: str
    covers: dict[str, Any] = field(default_factory=dict)
    region: Path | None = None  # a segmentation target's region (a mask file), None: the class's own pixels
    text: str | None = None  # an image-text target's free text (``target``: its logit column), None: a class
    similarity: float | None = None  # that text's cosine similarity with the image (plan stage)
    box: tuple[float, float, float, float] | None = None  # a detector's explained detection (model input pixels)
    rank: tuple[int, int] | None = None  # and its place k among the image's n kept detections, (k, n)
    result: np.ndarray | None = None
    error: str = ""
    cached: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    trace: list[float] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it was not computed
    unit: int | None = None
    concepts: dict[str, Any] | None = None  # a concept cell's layer, channels, shares, drops and random drop
    seconds: dict[str, float] = field(default_factory=dict)  # "compute" / "scoring": its share of the time

    @property
    def family(self) -> families.Family:
        """The technique's family (how the cell is computed, stored and shown)."""
        return families.named(registry.get(self.tech.name).family)

    @property
    def per_image(self) -> bool:
        """Whether the cell depends on its image (see :func:`reads_image`)."""
        return reads_image(self.tech)


def reads_image(tspec: TechniqueSpec) -> bool:
    """Whether a row's cells depend on the image: not those of a technique that does not need
    the image (class visualization) when the row names its own ``target``; such a row has one
    cell per model, planned with the first image (which it does not read)."""
    return tspec.target is None or registry.get(tspec.name).inputs.image == "required"


@dataclass
class LoadedImage:
    """An input image decoded, with each model's input made once."""

    ref: ImageRef
    pil: Image.Image
    _inputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def input_for(self, adapter: ModelAdapter) -> torch.Tensor:
        """The model's normalized (3, size, size) input for this image, made once per model."""
        if adapter.id not in self._inputs:
            self._inputs[adapter.id] = adapter.preprocess(self.pil)
        return self._inputs[adapter.id]


@dataclass
class Workspace:
    """The loaded side of a build: models by id and decoded images by id."""

    models: dict[str, ModelAdapter]
    images: dict[str, LoadedImage]

    def adapter(self, job: Job) -> ModelAdapter:
        return self.models[job.model.id]

    def image(self, job: Job) -> LoadedImage:
        return self.images[job.image.id]

    def objective(self, job: Job) -> Objective:
        """What the job's cell explains, as its model's task reads its target (and region or text)."""
        return self.adapter(job).objective(job.target, job.region, job.text, job.box)

    def inputs(self, jobs: list[Job]) -> torch.Tensor:
        """The jobs' model inputs stacked (N, 3, size, size); all jobs of one model."""
        adapter = self.adapter(jobs[0])
        return torch.stack([self.image(j).input_for(adapter) for j in jobs])


def load_models(manifest: Manifest) -> dict[str, ModelAdapter]:
    """Every model of the manifest, loaded; all problems (also layer/target checks) at once."""
    errors: list[str] = []
    try:
        device = choose_device(manifest.gallery.device)
    except ModelError as exc:
        raise ManifestError([f"{manifest.label}: gallery.device: {exc}"]) from None
    adapters: dict[str, ModelAdapter] = {}
    for spec in manifest.models:
        try:
            adapters[spec.id] = load_model(spec, manifest.root, device, f"{manifest.label}: {spec.field}")
        except ModelError as exc:
            errors.append(str(exc))
    errors += check_against_models(manifest, adapters)
    texts = free_texts(manifest)
    for adapter in adapters.values():
        if texts and adapter.task == "image-text":
            adapter.score_texts(texts)
    errors += [f"{manifest.label}: metrics.compute: {problem}" for problem in unknown_metrics(manifest.metrics.compute)]
    if errors:
        raise ManifestError(errors)
    return adapters


def read_images(manifest: Manifest) -> list[LoadedImage]:
    """The manifest's images, decoded, hashed and given unique slug ids (used by build and explain);
    every file that does not decode is reported at once, naming its manifest entry."""
    ids = unique_slugs([s.path.stem for s in manifest.images])
    out, errors = [], []
    for i, s in zip(ids, manifest.images):
        try:
            out.append(LoadedImage(ImageRef(i, s.path.name, s.path, file_sha256(s.path), s.target, s.mask, s.box,
                                            s.field), load_image(s.path)))
        except ImageError as exc:
            errors.append(f"{manifest.label}: {s.field}.path: {exc}")
    if errors:
        raise ManifestError(list(dict.fromkeys(errors)))
    return out


def workspace(manifest: Manifest) -> Workspace:
    """The manifest's models loaded and images decoded."""
    return Workspace(load_models(manifest), {img.ref.id: img for img in read_images(manifest)})


def _target_index(adapter: ModelAdapter, target: int | str | None, top1: int) -> int:
    if target is None:
        return top1
    if isinstance(target, int):
        return target
    lowered = [name.lower() for name in adapter.labels]
    return lowered.index(target.lower())


def model_covers(adapter: ModelAdapter) -> dict[str, Any]:
    """What decides a model's outputs: its weights (their fingerprint) and its preprocessing; and
    how they are read, where that is not as a classifier's (a multi-label model's sigmoids)."""
    read_as = {} if adapter.task == DEFAULT_TASK else {"task": adapter.task}
    if adapter.task == "detection":
        read_as.update(score_threshold=adapter.score_threshold, max_detections=adapter.max_detections)
    return {"model": adapter.name, "fingerprint": adapter.fingerprint, **adapter.preprocessing, **read_as}


def model_input(adapter: ModelAdapter, img: ImageRef) -> dict[str, Any]:
    """What decides a model's output for an image: the image's hash and :func:`model_covers`;
    part of every cache key of a cell that reads its image."""
    return {"image": img.sha, **model_covers(adapter)}


def prediction_key(adapter: ModelAdapter, img: ImageRef) -> str:
    """The cache key of a model's class confidences (a detector's detections) for an image."""
    return cache_key(kind="predict", **model_input(adapter, img))


def _predictions(adapter: ModelAdapter, images: list[LoadedImage], cache: Cache) -> dict[str, np.ndarray]:
    """Every class's confidence (:meth:`~galleryvis.sources.loading.ModelAdapter.confidences`)
    per image id, from the cache when possible; a detector's kept detections instead (:meth:`~galleryvis.
    sources.loading.ModelAdapter.detections`: (K, 6) boxes in the model input's pixels, score, class)."""
    if adapter.task == "detection":
        return _per_image(adapter, images, cache, prediction_key, lambda x: adapter.detections(x)[0])
    return _per_image(adapter, images, cache, prediction_key,
                      lambda x: adapter.confidences(x)[0].numpy().astype(np.float32))


def _per_image(adapter: ModelAdapter, images: list[LoadedImage], cache: Cache,
               key_of: Callable[[ModelAdapter, ImageRef], str], compute: Callable[[torch.Tensor], np.ndarray]
               ) -> dict[str, np.ndarray]:
    """``compute`` of each image's model input (a batch of one) per image id, cached under
    ``key_of(adapter, image)``, from the cache when possible."""
    out: dict[str, np.ndarray] = {}
    for img in images:
        key = key_of(adapter, img.ref)
        entry = cache.get(key)
        if entry is None:
            out[img.ref.id] = compute(img.input_for(adapter)[None])
            cache.put(key, out[img.ref.id], {"image": img.ref.name, "model": adapter.id,
                                             "covers": model_input(adapter, img.ref)})
        else:
            out[img.ref.id] = entry.array
    return out


def _similarity(adapter: ModelAdapter, img: LoadedImage, text: str, cache: Cache) -> float:
    """The cosine similarity of ``img`` with ``text`` by ``adapter`` (an image-text model), cached."""
    def compute(x: torch.Tensor) -> np.ndarray:
        objective = adapter.objective(0, text=text).bind(1)
        return objective.similarity(adapter.output(x)).cpu().numpy().astype(np.float32)  # type: ignore[attr-defined]

    return float(_per_image(adapter, [img], cache, lambda a, ref: similarity_key(a, ref, text), compute)[img.ref.id][0])


def label_map_key(adapter: ModelAdapter, img: ImageRef) -> str:
    """The cache key of a segmentation model's label map of an image."""
    return cache_key(kind="labels", **model_input(adapter, img))


def label_maps(adapter: ModelAdapter, images: list[LoadedImage], cache: Cache) -> dict[str, np.ndarray]:
    """A segmentation model's predicted class of every pixel of its crop of each image
    (:meth:`~galleryvis.sources.loading.ModelAdapter.label_map`, as uint8 or uint16) per image
    id, from the cache when possible; empty for a model of another task."""
    if adapter.task != "segmentation":
        return {}

    def labels(x: torch.Tensor) -> np.ndarray:
        out = adapter.label_map(x)[0].numpy()
        return out.astype(np.uint8 if out.max() < 256 else np.uint16)

    return _per_image(adapter, images, cache, label_map_key, labels)


class Resolved(NamedTuple):
    """A target as a model reads it: ``target`` its class index (an image-text model's free
    text: the text's logit column), ``region`` a segmentation class's mask file (None: the
    class's own pixels), ``text`` the free text (None: a class); a detector's: ``box``, its
    explained detection's box in the model input's pixels, and ``rank``, that detection's place k
    among the image's n kept detections, (k, n)."""

    target: int
    region: Path | None = None
    text: str | None = None
    box: tuple[float, float, float, float] | None = None
    rank: tuple[int, int] | None = None


def resolve_target(adapter: ModelAdapter, wanted: int | str | Region | FreeText | DetectionTarget | None,
                   confidences: np.ndarray, photo: tuple[int, int] | None = None) -> Resolved:
    """``wanted`` as ``adapter`` reads it (``None``: the model's top-1 from the image's
    ``confidences``; a detector's: the detection it names among the image's detections,
    :func:`_predictions`, a box given in the pixels of a photo of size ``photo``)."""
    if adapter.task == "detection":
        return resolve_detection(adapter, wanted, confidences, photo)
    if isinstance(wanted, FreeText):
        return Resolved(adapter.objective(0, text=wanted.text).index, None, wanted.text)  # type: ignore[attr-defined]
    cls, region = (wanted.cls, wanted.mask) if isinstance(wanted, Region) else (wanted, None)
    return Resolved(_target_index(adapter, cls, adapter.top1(torch.from_numpy(confidences))), region)


def resolve_detection(adapter: ModelAdapter, wanted: int | str | DetectionTarget | None, detections: np.ndarray,
                      photo: tuple[int, int] | None) -> Resolved:
    """The detection ``wanted`` names among an image's kept ``detections`` ((K, 6), best first):
    its class, box and place; a box in the pixels of a photo of size ``photo`` (width, height) is
    mapped into the model input's pixels first (:meth:`~galleryvis.sources.loading.ModelAdapter.input_box`).
    A one-line :class:`~galleryvis.targets.detection.NotFound` when none is."""
    asked = wanted if isinstance(wanted, DetectionTarget) else DetectionTarget(wanted)  # type: ignore[arg-type]
    cls = None if asked.cls is None else _target_index(adapter, asked.cls, 0)
    box = None
    if asked.box is not None:
        assert photo is not None, "a box target needs the photo's size"
        box = adapter.input_box(asked.box, photo)
        if box is None:
            raise NotFound(f"box {list(asked.box)} lies outside the crop of the photo model {adapter.id!r} sees")
    t = torch.from_numpy(np.asarray(detections, dtype=np.float32)).reshape(-1, 6)
    try:
        i = pick(Detections(t[:, :4], t[:, 5].long(), t[:, 4]), cls, box, asked.rank)
    except NotFound as exc:
        what = "" if cls is None else f" ({adapter.label(cls)})"
        raise NotFound(str(exc).removeprefix("Detection: ").replace(f"class {cls}", f"class {cls}{what}", 1)) from None
    x0, y0, x1, y1, _, label = (float(v) for v in detections[i])
    return Resolved(int(label), box=(x0, y0, x1, y1), rank=(i + 1, len(detections)))


def truth_mask(adapter: ModelAdapter, img: LoadedImage) -> np.ndarray | None:
    """Where the image's object is (its ``mask``, or its boxes), cropped as ``adapter`` sees the
    photo: a boolean (size, size) array; None for an image without ground truth."""
    if img.ref.mask is not None:
        return adapter.region_mask(img.ref.mask)
    if img.ref.box is None:
        return None
    width, height = img.pil.size
    return adapter.crop_mask(Image.fromarray(box_mask(img.ref.box, height, width).astype(np.uint8) * 255))


def free_texts(manifest: Manifest) -> list[str]:
    """Every free text the manifest's targets compare images with, in order, once each."""
    return list(dict.fromkeys(e.target.text for e in (*manifest.images, *manifest.techniques)
                              if isinstance(e.target, FreeText)))


def similarity_key(adapter: ModelAdapter, img: ImageRef, text: str) -> str:
    """The cache key of an image-text model's cosine similarity of an image with a text."""
    return cache_key(kind="similarity", text=text, **model_input(adapter, img))


def layer_for(adapter: ModelAdapter, tspec: TechniqueSpec) -> Any:
    """The technique entry's own layer, else the model's layer for that technique, else the
    model's default CAM layer for techniques that need one."""
    tech = registry.get(tspec.name)
    chosen = tspec.layer if tspec.layer is not None else adapter.layer_for(tech.name)
    if chosen is None and tech.layer in ("one", "many"):
        chosen = adapter.default_layer()
    if tech.layer == "many" and isinstance(chosen, str):
        chosen = (chosen,)
    return chosen if chosen is None or isinstance(chosen, str) else tuple(chosen)


def plan(manifest: Manifest, ws: Workspace, cache: Cache, force: bool
         ) -> tuple[list[Job], dict[str, dict[str, np.ndarray]]]:
    """Every cell with its cache key, and each model's predictions; cached cells are marked."""
    jobs: list[Job] = []
    preds: dict[str, dict[str, np.ndarray]] = {}
    images = list(ws.images.values())
    device_class = "cpu"
    errors: list[str] = []
    for spec in manifest.models:
        adapter = ws.models[spec.id]
        device_class = adapter.device.type
        preds[spec.id] = _predictions(adapter, images, cache)
        for tspec in manifest.techniques:
            tech = registry.get(tspec.name)
            params = registry.resolve_params(tech, tspec.params)
            if tech.inputs.model_size and "size" not in tspec.given:
                params["size"] = adapter.size
            layer = layer_for(adapter, tspec)
            each_image = reads_image(tspec)
            for img in images if each_image else images[:1]:
                wanted = img.ref.target if tspec.target is None else tspec.target
                try:
                    target, region, text, box, rank = resolve_target(adapter, wanted, preds[spec.id][img.ref.id],
                                                                     img.pil.size)
                except NotFound as exc:
                    errors.append(f"{manifest.label}: {img.ref.field or 'images'}.target: image {img.ref.name!r}, "
                                  f"model {spec.id!r}: {exc}")
                    continue
                read = target if text is None else {"text": text}
                if box is not None:  # what the detection target asked, and the detection it names
                    asked = wanted if isinstance(wanted, DetectionTarget) else DetectionTarget(wanted)  # type: ignore[arg-type]
                    read = {"detection": [asked.cls, asked.box, asked.rank], "class": target,
                            "box": [round(v, 3) for v in box]}
                covers = {"kind": families.named(tech.family).stores,
                          **(model_input(adapter, img.ref) if each_image else model_covers(adapter)),
                          "technique": tech.name, "version": tech.version,
                          "params": params, "layer": layer, "target": read,
                          "device": device_class, **({} if region is None else {"region": file_sha256(region)})}
                job = Job(spec, img.ref, tspec, params, layer, target, cache_key(**covers), covers, region, text,
                          box=box, rank=rank)
                if text is not None and each_image:
                    job.similarity = _similarity(adapter, img, text, cache)
                if not force and cache.has(job.key):
                    job.cached = True
                jobs.append(job)
    if errors:
        raise ManifestError(list(dict.fromkeys(errors)))
    return jobs, preds


def plan_lines(jobs: list[Job]) -> list[str]:
    """One line per (model, technique): how many cells are to compute and how many cached."""
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for j in jobs:
        counts[(j.model.id, j.tech.id)][0 if not j.cached else 1] += 1
    return [f"{m} / {t}: {c[0]} to compute, {c[1]} cached" for (m, t), c in counts.items()]
