"""``galleryvis explain``: one visualization of one photo, through the same manifest checks, plan,
executor and cache as a build, written as the picture people expect (the map over the whole
photo), as one of the gallery's display variants, or as the raw map."""
from __future__ import annotations

import io
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from galleryvis.render import postprocess
from galleryvis.render.grid import share_text
from galleryvis import registry, sources
from galleryvis.storage.cache import Cache
from galleryvis.engine import default_batch_size
from galleryvis.build.executor import LocalExecutor
from galleryvis.storage.fileio import atomic_write
from galleryvis.storage.images import central_square
from galleryvis.build.jobs import Job, plan, workspace
from galleryvis.config.manifest import ManifestError, parse_manifest
from galleryvis.sources.loading import ModelAdapter
from galleryvis.build.pipeline import load_cached
from galleryvis.build.progress import Progress
from galleryvis.build.sitewriter import boxed, display_kind, pictures

#: The default view: the map over the whole photo (:func:`postprocess.on_photo`).
PHOTO = "photo"
#: The view that writes the technique's float map itself (``.npy``), or as a grey picture.
RAW = "raw"
#: What ``-o`` may end in: the picture formats, and ``.npy`` for the raw map.
SUFFIXES = (*postprocess.PICTURE_FORMATS, ".npy")

#: The fields of the one-entry manifest ``explain`` builds, and the flag that set each.
FLAGS = {"images[0].path": "IMAGE", "images[0].target": "--target", "models[0].name": "--model",
         "models[0].weights": "--weights", "models[0].layers": "--layer", "techniques[0].name": "--technique",
         "techniques[0].layer": "--layer", "techniques[0].params": "--param", "gallery.device": "--device"}
_FIELD = re.compile(r"(?:[^:]*: )?(?P<field>(?:images|models|techniques)\[0\]\.\w+|gallery\.\w+)"
                    r"(?:\.[^:\s]+)?: (?P<text>.*)", re.DOTALL)


@dataclass(frozen=True)
class Explained:
    """What ``explain`` wrote: the file, the model (and whether its weights are random), the
    technique's title, what it explained (``'tabby' (class 281, probability 35.4 %)``, ``channel 7
    of _blocks.15``, or '' for a technique of neither), and the model's confidence in the target
    explained on the photo, as :func:`confidence_text` names it by the model's task (None unless
    the technique explains the photo's target)."""

    path: Path
    model: str
    random: bool
    technique: str
    subject: str
    confidence: float | None

    def line(self) -> str:
        """One line for the terminal: model, technique, what it explained, file."""
        model = f"{self.model} (random weights)" if self.random else self.model
        subject = f" for {self.subject}" if self.subject else ""
        return f"{model}: {self.technique}{subject} -> {self.path}"


def flagged(exc: ManifestError) -> ManifestError:
    """``exc`` with each problem in a field ``explain`` set from a flag named by that flag
    (``--technique: unknown technique 'gradcma' ...``, not ``techniques[0].name: ...``)."""
    lines = []
    for message in exc.errors:
        found = _FIELD.match(message)
        flag = FLAGS.get(found["field"]) if found else None
        lines.append(f"{flag}: {found['text']}" if found and flag else message)
    return ManifestError(lines)


def output_problem(output: Path, variant: str | None) -> str:
    """Why ``-o output`` cannot hold ``variant`` ('' when it can): a suffix that names no
    format, or a picture variant asked of a ``.npy`` file (which holds the raw map)."""
    suffix = output.suffix.lower()
    if suffix not in SUFFIXES:
        return f"-o: {output.name!r} names no format galleryvis writes; end it in {', '.join(SUFFIXES)}"
    if suffix == ".npy" and variant not in (None, RAW):
        return (f"-o: a .npy file holds the raw map (--variant raw), not the {variant!r} picture; "
                f"end -o in {', '.join(postprocess.PICTURE_FORMATS)}")
    return ""


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ManifestError([f"--param: expected key=value, got {pair!r}"])
        try:
            params[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            params[key.strip()] = value
    return params


def explain_one(image: Path, model: str, weights: str | None, technique: str, target: str | None,
                layer: str | None, params: tuple[str, ...], variant: str | None, output: Path,
                cache_dir: Path | str, device: str | None = None) -> Explained:
    """Compute (or fetch from the cache) one map and write it to ``output`` in the format its
    suffix names: by default the map over the whole photo (:data:`PHOTO`), else the display
    variant ``variant`` of the gallery (at the model's input crop) or :data:`RAW`. ``device``
    overrides where the model runs (default: auto). Problems are a ManifestError naming the
    flag (:data:`FLAGS`), raised before anything is loaded where the flags alone show them."""
    problem = output_problem(output, variant)
    if problem:
        raise ManifestError([problem])
    if not sources.known(model):
        raise ManifestError([f"--model: unknown model {model!r}{sources.close_names(model)}"])
    img: dict[str, Any] = {"path": str(image.absolute())}
    if target is not None:
        img["target"] = int(target) if target.lstrip("-").isdigit() else target
    mdl: dict[str, Any] = {"name": model}
    if weights is not None:
        mdl["weights"] = weights
    if layer is not None:
        mdl["layers"] = {technique: layer}
    data: dict[str, Any] = {"images": [img], "models": [mdl],
                            "techniques": [{"name": technique, "params": _parse_params(params)}]}
    if device is not None:
        data["gallery"] = {"device": device}
    try:
        manifest = parse_manifest(data, path=None, root=Path.cwd())
        ws = workspace(manifest)
        cache = Cache(cache_dir)
        (job,), preds = plan(manifest, ws, cache, force=False)
    except ManifestError as exc:
        raise flagged(exc) from None
    adapter, photo = ws.adapter(job), ws.image(job).pil
    if load_cached([job], cache):
        LocalExecutor(ws, default_batch_size(adapter.device), fail_fast=True).run([job], cache, Progress(0, True), {})
    assert job.result is not None
    tech = registry.get(technique)
    kind = display_kind(tech, job.result)
    reads_class = tech.inputs.image == "required" and tech.inputs.unit == "target"  # of the photo, not made from a class
    read = preds[adapter.id][job.image.id]  # a detector's: its detections, the explained one's score
    confidence = float(read[job.rank[0] - 1, 4] if job.rank else read[job.target]) if reads_class else None
    views = {key: picture for key, _, picture in pictures(tech, job.result, adapter.crop(photo))}
    choices = ([] if kind == "image" else [PHOTO]) + list(views) + [RAW]
    chosen = variant or choices[0]
    if chosen not in choices:
        raise ManifestError([f"--variant: {technique} has no variant {chosen!r}{registry.suggest(chosen, choices)}; "
                             f"choose from {', '.join(choices)}"])
    if output.suffix.lower() == ".npy":
        buf = io.BytesIO()
        np.save(buf, job.result.astype(np.float32), allow_pickle=False)
        atomic_write(output, buf.getvalue())
    else:
        tag = f"{adapter.label(job.target)} {confidence:.2f}" if job.box is not None and confidence is not None else ""
        if chosen == PHOTO:
            shown = postprocess.on_photo(kind, job.result, photo, central_square(*photo.size, adapter.crop_pct))
            if tag:  # the explained detection, where the crop puts it on the photo
                shown = postprocess.outline_box(shown, adapter.photo_box(job.box, photo.size), tag)
        else:
            shown = postprocess.raw_picture(kind, job.result) if chosen == RAW else views[chosen]
            if tag and chosen != RAW:  # the explained detection, on the model's input
                shown = boxed(shown, job.box, adapter.size, tag)
        postprocess.save_picture(shown, output)
    return Explained(output, adapter.id, adapter.random, tech.title, _subject(job, adapter, confidence), confidence)


def confidence_text(task: str, confidence: float, rank: tuple[int, int] | None = None) -> str:
    """The model's confidence in the target it explains, named as what it is for ``task``: a
    detection's score and its place ``rank`` (k, n) among the image's kept detections ("score
    0.91, box 1 of 3"), a segmentation class's share of the pixels ("18 % of the pixels"), an
    image-text model's softmax over its prompts, a classifier's softmax (a multi-label one's
    sigmoid) probability ("probability 35.4 %")."""
    if task == "detection":
        return f"score {confidence:.2f}" + ("" if rank is None else f", box {rank[0]} of {rank[1]}")
    if task == "segmentation":
        return f"{share_text(confidence)} of the pixels"
    return f"probability {100 * confidence:.1f} %" + (" over the prompts" if task == "image-text" else "")


def _subject(job: Job, adapter: ModelAdapter, confidence: float | None) -> str:
    """What ``job`` explained, in words: its class (with its ``confidence``), its channel, or ''."""
    unit = registry.get(job.tech.name).inputs.unit
    if unit == "target":
        odds = "" if confidence is None else f", {confidence_text(adapter.task, confidence, job.rank)}"
        return f"{adapter.label(job.target)!r} (class {job.target}{odds})"
    if unit == "channel" and job.unit is not None:
        return f"channel {job.unit}" + (f" of {job.layer}" if isinstance(job.layer, str) else "")
    return ""
