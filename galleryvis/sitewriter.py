"""The site stage: computed jobs -> pictures -> plain records -> pages, in a staged folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import postprocess, registry
from .fileio import atomic_write
from .images import fit
from .jobs import Job, LoadedImage, Workspace, layer_for
from .manifest import Manifest
from .models import ModelAdapter
from .naming import unique_slugs
from .records import Cell, Gallery, ImageRecord, ModelRecord, Prediction, Ranking, TechniqueRecord, Variant
from .sitefiles import staged
from .synthesis.api import spec_of


def pictures(tech: registry.Technique, raw: np.ndarray, image: Image.Image, colormap: str | None = None,
             alpha: float = 0.5) -> list[tuple[str, str, Image.Image]]:
    """The display variants of one cell's raw map, chosen by the technique's display kind."""
    kind = "cam" if tech.kind == "gradient" and raw.shape[0] == 1 else tech.kind  # one channel: a heatmap
    return postprocess.variants(kind, raw.astype(np.float32), image, colormap=colormap, alpha=alpha,
                                guided=tech.split_sign)


def title(tid: str, name: str) -> str:
    """The row title: the technique's display name, plus what sets this entry apart
    (``"layercam (block 4)"`` -> ``"LayerCAM (block 4)"``)."""
    base = registry.get(name).title
    if tid == name:
        return base
    rest = tid[len(name):].strip() if tid.startswith(name) else tid
    return f"{base} {rest}" if rest.startswith("(") else f"{base} ({rest})"


def _save(img: Image.Image, out: Path, rel: str, previous: Path | None = None,
          thumb_size: int = 160) -> tuple[str, str]:
    """Save a picture and its thumbnail under ``out``, reusing ``previous`` (the last site)'s
    files where their pixels are the same (an unchanged rebuild then encodes nothing)."""
    thumb_rel = "thumbs/" + rel
    for path, pic in ((rel, img), (thumb_rel, postprocess.thumbnail(img, thumb_size))):
        reuse = previous / path if previous is not None else None
        postprocess.save_png(pic, out / path, reuse if reuse is not None and reuse.is_file() else None)
    return rel, thumb_rel


def _cell_record(job: Job, ws: Workspace, out: Path, manifest: Manifest, image_pil: Image.Image,
                 parts: tuple[dict[str, str], dict[str, str]], previous: Path | None = None) -> Cell:
    """The cell's record; its pictures go under the model's and the technique's name ``parts``
    (reusing ``previous``'s files where they are the same pictures)."""
    tech = registry.get(job.tech.name)
    adapter = ws.adapter(job)
    label = adapter.label(job.target)
    if tech.family == "synthesis" and spec_of(tech.name).unit != "target":
        label = f"channel {job.unit}" if job.unit is not None else ""
    if job.error:
        return Cell(job.model.id, job.image.id, job.tech.id, job.target, label, "failed", error=job.error)
    assert job.result is not None
    variants = []
    pics = pictures(tech, job.result, image_pil, manifest.gallery.colormap, manifest.gallery.alpha)
    for key, vlabel, pic in pics:
        rel = f"img/{parts[0][job.model.id]}/{job.image.id}/{parts[1][job.tech.id]}-{key}.png"
        src, thumb = _save(pic, out, rel, previous)
        alt = f"{title(job.tech.id, tech.name)} {vlabel.lower()}, model {job.model.id}, " \
              f"image {job.image.name}, class {label} ({job.target})"
        variants.append(Variant(key, vlabel, src, thumb, alt))
    target = job.target if label == adapter.label(job.target) else None
    return Cell(job.model.id, job.image.id, job.tech.id, target, label, "ok", variants=variants,
                metrics=dict(job.metrics), curves=dict(job.curves), trace=list(job.trace))


def _technique_records(manifest: Manifest) -> list[TechniqueRecord]:
    out = []
    for tspec in manifest.techniques:
        tech = registry.get(tspec.name)
        params = registry.resolve_params(tech, tspec.params)
        out.append(TechniqueRecord(tspec.id, tech.name, title(tspec.id, tech.name), tech.family,
                                   {k: v for k, v in params.items()}, tech.doc or tech.summary, tech.paper))
    return out


def write_site(manifest: Manifest, ws: Workspace, jobs: list[Job], preds: dict[str, dict[str, np.ndarray]],
               rankings: list[Ranking], counts: dict[str, int], timings: dict[str, Any], out: Path) -> None:
    """Render every page and picture into a staged folder that replaces ``out`` when complete;
    ``counts`` (computed / cached / failed) show on the pages, ``timings`` go to build.json."""
    from .render import render_site

    with staged(out) as tmp:
        fitted: dict[tuple[str, Any], Image.Image] = {}

        def crop(img: LoadedImage, adapter: ModelAdapter | None) -> Image.Image:
            """The model's crop of the image (its size, crop and interpolation); 224 px for the listing."""
            key = (img.ref.id, tuple(adapter.input_key.items()) if adapter else None)
            if key not in fitted:
                fitted[key] = adapter.fit(img.pil) if adapter else fit(img.pil, 224)
            return fitted[key]

        image_records = []
        for img in ws.images.values():
            src, thumb = _save(crop(img, None), tmp, f"img/input/{img.ref.id}.png", out)
            image_records.append(ImageRecord(img.ref.id, img.ref.name, src, thumb))
        model_records = []
        for spec in manifest.models:
            a = ws.models[spec.id]
            top5 = {i: [Prediction(int(k), a.label(int(k)), round(float(p[k]), 4)) for k in np.argsort(-p)[:5]]
                    for i, p in preds[spec.id].items()}
            layers = {}
            for t in manifest.techniques:
                lay = layer_for(a, t)
                if lay is not None:
                    layers[t.id] = lay if isinstance(lay, str) else ", ".join(lay)
            model_records.append(ModelRecord(a.id, a.name, a.description, top5, layers))
        # File-name parts, distinct even for ids that differ only in case or punctuation.
        ids = [m.id for m in manifest.models], [t.id for t in manifest.techniques]
        parts = dict(zip(ids[0], unique_slugs(ids[0]))), dict(zip(ids[1], unique_slugs(ids[1])))
        cells = [_cell_record(job, ws, tmp, manifest, crop(ws.image(job), ws.adapter(job)), parts, out)
                 for job in jobs]
        gallery = Gallery(manifest.gallery.title, manifest.gallery.description, image_records, model_records,
                          _technique_records(manifest), cells, rankings, counts)
        render_site(gallery, tmp)
        atomic_write(tmp / "build.json", json.dumps(timings, indent=2, sort_keys=True).encode())
