"""The site stage: computed jobs -> pictures -> plain records -> pages, in a staged folder."""
from __future__ import annotations

import base64
import io
import json
import math
import time
import zipfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np
from PIL import Image

from galleryvis.render import postprocess
from galleryvis.render.grid import METRICS as SCORES
from galleryvis import registry
from galleryvis.metrics import METRICS, agreement
from galleryvis.metrics.meta_evaluation import CATEGORIES, GALLERY_CATEGORIES
from galleryvis.storage.fileio import atomic_write
from galleryvis.storage.images import fit, load_image
from galleryvis.build.jobs import Job, LoadedImage, Workspace, layer_for, resolve_target, truth_mask
from galleryvis.config.manifest import Manifest, Region
from galleryvis.sources.loading import ModelAdapter
from galleryvis.naming import unique_slugs
from galleryvis.build.progress import Stages
from galleryvis.build.reference_pass import MODES, RowReferences
from galleryvis.render.records import (RECORDS_FILE, Appearance, Atlas, AtlasConcept, Cell, ClassShare, ColourScale,
                                       Concept, Detected, DetectedBox, Gallery, ImageRecord, LabelClass, MetricAgreement,
                                       MetricColumn, MetricTable, MetricValue, ModelRecord, Prediction, Ranking,
                                       ReferenceExample, Segmentation, Size, TechniqueRecord, Variant)
from galleryvis.storage.sitefiles import staged

#: Thumbnail box in CSS pixels; the full-resolution view serves 2x screens (``srcset``).
THUMB = 160
#: WebP settings of every picture: lossy, deterministic for the same pixels (quality 55 keeps the
#: complete gallery, 38 rows x 3 photos x 2 models, under 8 MB; the maps are smooth enough).
WEBP = {"quality": 55, "method": 6}
#: A reference example's crop on the atlas, in CSS pixels on its long side; its file is twice that.
REFERENCE_THUMB = 80
#: The viewer's map values: at most this many samples on the long side (box-averaged).
VALUES_SIZE = 40

#: The sentence each ``[gallery] scale`` puts on the pages.
SCALING = {
    "per-map": "each map on its own scale",
    "per-image": "one scale per technique and image, shared by the models",
    "per-row": "one scale per technique row, shared by every image and model",
}


def display_kind(tech: registry.Technique, raw: np.ndarray) -> str:
    """The postprocess kind a cell is drawn as: a one-channel gradient is a heatmap."""
    return "cam" if tech.kind == "gradient" and raw.shape[0] == 1 else tech.kind


def pictures(tech: registry.Technique, raw: np.ndarray, image: Image.Image, colormap: str | None = None,
             alpha: float = 0.5, scale: postprocess.Limits | None = None,
             outlier_perc: float = postprocess.OUTLIER_PERC) -> list[tuple[str, str, Image.Image]]:
    """The display variants of one cell's raw map, chosen by the technique's display kind."""
    return postprocess.variants(display_kind(tech, raw), raw.astype(np.float32), image, colormap=colormap,
                                alpha=alpha, guided=tech.split_sign, scale=scale, outlier_perc=outlier_perc)


def title(tid: str, name: str) -> str:
    """The row title: the technique's display name, plus what sets this entry apart
    (``"layercam (block 4)"`` -> ``"LayerCAM (block 4)"``)."""
    base = registry.get(name).title
    if tid == name:
        return base
    rest = tid[len(name):].strip() if tid.startswith(name) else tid
    return f"{base} {rest}" if rest.startswith("(") else f"{base} ({rest})"


def _webp(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="WEBP", **WEBP)
    return buf.getvalue()


def _save(img: Image.Image, out: Path, rel: str) -> tuple[str, str, Size, Size]:
    """Save a picture (WebP, full resolution) and its thumbnail under ``out``; their paths and sizes."""
    thumb = postprocess.thumbnail(img, THUMB)
    thumb_rel = "thumbs/" + rel
    atomic_write(out / rel, _webp(img))
    atomic_write(out / thumb_rel, _webp(thumb))
    return rel, thumb_rel, Size(*img.size), Size(*thumb.size)


def values_script(rel: str, kind: str, raw: np.ndarray) -> bytes:
    """The map's display values for the viewer, as a script that works from ``file://`` too:
    ``galleryvisMap({...})`` with the values box-averaged to at most :data:`VALUES_SIZE` on the
    long side and quantized to 16 bits between ``lo`` and ``hi`` (little-endian, base64)."""
    values = postprocess.display_values(kind, raw).astype(np.float32)
    h, w = values.shape
    f = max(1, math.ceil(max(h, w) / VALUES_SIZE))
    small = np.asarray(Image.fromarray(values, "F").resize((max(1, w // f), max(1, h // f)), Image.Resampling.BOX))
    lo, hi = float(small.min()), float(small.max())
    q = np.rint((small - lo) / (hi - lo) * 65535) if hi > lo else np.zeros_like(small)
    data = base64.b64encode(q.astype("<u2").tobytes()).decode("ascii")
    payload = {"src": rel, "w": small.shape[1], "h": small.shape[0], "lo": lo, "hi": hi,
               "quantity": postprocess.QUANTITY[postprocess.MAIN_VARIANT[kind]],
               "q": data}
    return f"galleryvisMap({json.dumps(payload, sort_keys=True)});\n".encode()


def _range_text(span: tuple[float, float]) -> str:
    return f"{span[0]:.3g} to {span[1]:.3g}"


def _folder(job: Job) -> str:
    """The folder of a cell's files, under its model's: its image's id, ``_`` for a row that reads no image."""
    return job.image.id if job.per_image else "_"


def _cell_record(job: Job, ws: Workspace, out: Path, manifest: Manifest, image_pil: Image.Image,
                 parts: tuple[dict[str, str], dict[str, str]], scale: postprocess.Limits | None,
                 scale_keys: set[str], confidences: np.ndarray) -> Cell:
    """The cell's record; its pictures go under the model's and the technique's name ``parts``.
    ``scale`` is the shared value range of its group (None: the map's own)."""
    tech = registry.get(job.tech.name)
    adapter = ws.adapter(job)
    explains_class = tech.inputs.unit == "target" and job.text is None
    if explains_class:  # a detection's confidence is its score, a class's its probability or share of the pixels
        confidence = float(confidences[job.rank[0] - 1, 4] if job.rank is not None else confidences[job.target])
        label = adapter.target_label(job.target, confidence, job.region, job.rank)
    else:
        label = _text_label(job) if job.text is not None else f"channel {job.unit}" if job.unit is not None else ""
    target = job.target if explains_class else None
    image_id = job.image.id if job.per_image else ""  # a row that does not read its image: one cell per model
    if job.error:
        return Cell(job.model.id, image_id, job.tech.id, target, label, "failed", error=job.error,
                    text=job.text is not None)
    assert job.result is not None
    raw = job.result.astype(np.float32)
    g = manifest.gallery
    stem = f"img/{parts[0][job.model.id]}/{_folder(job)}/{parts[1][job.tech.id]}"
    if job.concepts is not None:
        what = f"model {job.model.id}, image {job.image.name}, " \
            + (f"class {label} ({job.target})" if explains_class else label)
        facts = job.concepts
        return Cell(job.model.id, image_id, job.tech.id, target, label, "ok", text=job.text is not None,
                    concepts=_concept_pictures(facts, raw, image_pil, out, stem, manifest, what.rstrip(", ")),
                    random_drop=facts.get("random_drop"), random_channels=int(facts.get("random_channels", 0)))
    kind = display_kind(tech, raw)
    pics = pictures(tech, raw, image_pil, g.colormap, g.alpha, scale, g.outlier_perc)
    if job.box is not None:  # a detector's explained detection, on every picture of the cell
        pics = [(key, vlabel, boxed(pic, job.box, adapter.size, label.split(",")[0])) for key, vlabel, pic in pics]
    variants = []
    for key, vlabel, pic in pics:
        src, thumb, size, tsize = _save(pic, out, f"{stem}-{key}.webp")
        alt = f"{title(job.tech.id, tech.name)} {vlabel.lower()}, model {job.model.id}, " \
              + (f"image {job.image.name}, " if image_id else "") \
              + (f"class {label} ({job.target})" if explains_class else label)
        variants.append(Variant(key, vlabel, src, thumb, alt.rstrip(", "), size, tsize, key if key in scale_keys else "",
                                _range_text(scale[key]) if scale is not None and key in scale else ""))
    values = ""
    if kind != "image":
        values = f"{stem}.js"
        atomic_write(out / values, values_script(values, kind, raw))
    return Cell(job.model.id, image_id, job.tech.id, target, label, "ok", variants=variants,
                metrics=dict(job.metrics), curves=dict(job.curves), trace=list(job.trace), values=values,
                skipped=dict(job.skipped), text=job.text is not None)


def boxed(pic: Image.Image, box: tuple[float, float, float, float], size: int, text: str) -> Image.Image:
    """``pic`` (a picture of the model's ``size`` x ``size`` input, at any resolution) with
    ``box`` (the input's pixels) outlined and named ``text``."""
    f = pic.width / size
    return postprocess.outline_box(pic, (box[0] * f, box[1] * f, box[2] * f, box[3] * f), text)


def _concept_pictures(facts: dict[str, Any], raw: np.ndarray, image: Image.Image, out: Path, stem: str,
                      manifest: Manifest, what: str) -> list[Concept]:
    """A concept cell's concepts: each conditional map (``raw``, (k, H, W)) drawn as a signed map
    on its own scale, saved as ``<stem>-ch<channel>.webp`` with its viewer values."""
    g = manifest.gallery
    channels, shares = facts["channels"], facts["shares"]
    drops = facts.get("drops") or [None] * len(channels)
    found = []
    for j, (channel, share, drop) in enumerate(zip(channels, shares, drops)):
        m = raw[j][None]
        key, vlabel, pic = postprocess.variants("signed", m, image, colormap=g.colormap, alpha=g.alpha,
                                                outlier_perc=g.outlier_perc)[0]
        rel = f"{stem}-ch{channel}"
        src, thumb, size, tsize = _save(pic, out, f"{rel}.webp")
        alt = (f"Concept {channel} of layer {facts['layer']}: its conditional relevance map, "
               f"{share * 100:.0f} % of the layer's relevance; {what}")
        atomic_write(out / f"{rel}.js", values_script(f"{rel}.js", "signed", m))
        found.append(Concept(int(channel), float(share), None if drop is None else float(drop),
                             Variant(key, vlabel, src, thumb, alt, size, tsize, key), f"{rel}.js"))
    return found


#: A concept's reference examples per mode (:data:`~galleryvis.build.reference_pass.MODES`), by channel.
Examples = dict[int, dict[str, list[ReferenceExample]]]


def reference_records(found: dict[tuple[str, str], RowReferences], ws: Workspace, out: Path,
                      parts: dict[str, str]) -> dict[tuple[str, str], Examples]:
    """The reference examples of each (model id, concept row) as records, each example's picture
    (the part of the photo its box covers, as the model crops the photo, :data:`REFERENCE_THUMB`
    CSS pixels on its long side) saved once under ``img/<model>/refs/``."""
    photos = {img.ref.path: img.pil for img in ws.images.values()}
    slugs: dict[Path, str] = {}
    saved: dict[str, Variant] = {}
    records: dict[tuple[str, str], Examples] = {}
    for (model_id, row), refs in found.items():
        adapter = ws.models[model_id]
        if not slugs.keys() >= set(refs.files):
            slugs.update(zip(refs.files, unique_slugs([p.stem for p in refs.files])))
        per_channel: Examples = {}
        for channel, modes in refs.examples.items():
            per_channel[channel] = {}
            for mode in MODES:
                shown = []
                # an image whose share is not positive is no example of the concept (a small set has few)
                for rank, ex in enumerate((ex for ex in modes[mode] if ex.value > 0), 1):
                    path = refs.files[ex.file]
                    rel = f"img/{parts[model_id]}/refs/{slugs[path]}-{'-'.join(map(str, ex.box))}.webp"
                    if rel not in saved:
                        if path not in photos:
                            photos[path] = load_image(path)
                        saved[rel] = _reference_picture(photos[path], adapter, ex.box, out, rel)
                    what = "relevant" if mode == "relevance" else "active"
                    alt = (f"Most {what} reference example {rank} of concept {channel} of layer {refs.layer}: "
                           f"{path.name}, {ex.value * 100:.2g} % of the layer's {mode}, cropped to where the "
                           f"concept's relevance lies")
                    shown.append(ReferenceExample(path.name, ex.value, list(ex.box),
                                                  replace(saved[rel], alt=alt)))
                per_channel[channel][mode] = shown
        records[(model_id, row)] = per_channel
    return records


def _reference_picture(photo: Image.Image, adapter: ModelAdapter, box: tuple[int, int, int, int], out: Path,
                       rel: str) -> Variant:
    """The part of ``photo`` a box of the model's input (``(row0, row1, col0, col1)``) covers,
    resampled from the photo itself, saved at twice :data:`REFERENCE_THUMB` on its long side."""
    r0, r1, c0, c1 = box
    region = adapter.photo_box((c0, r0, c1 + 1, r1 + 1), photo.size)
    long_side = max(r1 - r0, c1 - c0) + 1
    w, h = (max(1, round(2 * REFERENCE_THUMB * n / long_side)) for n in (c1 - c0 + 1, r1 - r0 + 1))
    pic = photo.resize((w, h), Image.Resampling.BICUBIC, box=region)
    atomic_write(out / rel, _webp(pic))
    shown = Size(max(1, w // 2), max(1, h // 2))
    return Variant("reference", "Reference example", rel, rel, "", Size(w, h), shown)


def concept_atlases(jobs: list[Job], cells: list[Cell],
                    examples: dict[tuple[str, str], Examples] | None = None) -> list[Atlas]:
    """One atlas per model and concept row (``cells`` are the records of ``jobs``, in order): every
    channel in some cell's top-k with where it appears, the classes it matters for, its mean
    confidence drop (the order: largest first), its reference examples (``examples``, by model
    and row, :func:`reference_records`) and, where a filter visualization cell of the same model
    shows that channel of that layer, its picture."""
    rows: dict[tuple[str, str], list[tuple[Job, Cell]]] = defaultdict(list)
    features: dict[tuple[str, str, int], tuple[str, Variant]] = {}
    for job, cell in zip(jobs, cells):
        if cell.concepts:
            rows[(job.model.id, job.tech.id)].append((job, cell))
        elif job.unit is not None and isinstance(job.layer, str) and cell.status == "ok" and cell.variants:
            features.setdefault((job.model.id, job.layer, job.unit), (job.tech.id, cell.variants[0]))
    atlases = []
    for (model_id, tech_id), pairs in rows.items():
        layer = pairs[0][0].concepts["layer"]  # type: ignore[index]
        refs = (examples or {}).get((model_id, tech_id), {})
        seen: dict[int, list[tuple[Cell, int, Concept]]] = defaultdict(list)
        for _, cell in pairs:
            for rank, c in enumerate(cell.concepts, 1):
                seen[c.channel].append((cell, rank, c))
        entries = []
        for channel, where in seen.items():
            drops = [c.drop for _, _, c in where if c.drop is not None]
            randoms = [cell.random_drop for cell, _, _ in where if cell.random_drop is not None]
            apps = sorted((Appearance(cell.image_id, cell.target_index, cell.target_label, rank, c.share, c.drop,
                                      c.picture, c.values) for cell, rank, c in where),
                          key=lambda a: (-a.share, a.image_id))
            classes: dict[tuple[int | None, str], list[float]] = defaultdict(list)
            for a in apps:
                classes[(a.target_index, a.target_label)].append(a.share)
            ranked = sorted((ClassShare(i, lab, len(s), max(s)) for (i, lab), s in classes.items()),
                            key=lambda c: (-c.images, -c.share, c.label))
            feature = features.get((model_id, layer, channel))
            shown = refs.get(channel, {})
            entries.append(AtlasConcept(channel, sum(drops) / len(drops) if drops else None,
                                        sum(randoms) / len(randoms) if randoms else None, apps, ranked,
                                        feature[1] if feature else None, feature[0] if feature else "",
                                        shown.get("relevance", []), shown.get("activation", [])))
        entries.sort(key=lambda e: (e.drop is None, -(e.drop or 0.0), e.channel))
        atlases.append(Atlas(model_id, tech_id, layer, max(c.random_channels for _, c in pairs), entries))
    return atlases


def _text_label(job: Job) -> str:
    """An image-text cell's free text as its column names it: ``text "a red car", similarity 0.27``."""
    return f"text {json.dumps(job.text, ensure_ascii=False)}" + \
        ("" if job.similarity is None else f", similarity {job.similarity:.2f}")


def _technique_records(manifest: Manifest) -> list[TechniqueRecord]:
    out = []
    for tspec in manifest.techniques:
        tech = registry.get(tspec.name)
        params = registry.resolve_params(tech, tspec.params)
        out.append(TechniqueRecord(tspec.id, tech.name, title(tspec.id, tech.name), tech.family,
                                   {k: v for k, v in params.items()}, tech.doc or tech.summary, tech.paper,
                                   tech.kind, tech.group))
    return out


def _scale_mode(manifest: Manifest, tech_id: str) -> str:
    spec = next(t for t in manifest.techniques if t.id == tech_id)
    return spec.scale or manifest.gallery.scale


def shared_limits(manifest: Manifest, jobs: list[Job]) -> dict[int, postprocess.Limits]:
    """Each successful job's shared value range (by ``id(job)``), for techniques whose scale is
    per image or per row; per-map cells are left out (each uses its own)."""
    groups: dict[tuple[Any, ...], list[Job]] = defaultdict(list)
    for j in jobs:
        if j.result is None or j.error or j.concepts is not None:  # a concept cell's maps: each on its own scale
            continue
        mode = _scale_mode(manifest, j.tech.id)
        kind = display_kind(registry.get(j.tech.name), j.result)
        if mode != "per-map" and kind != "image":
            groups[(j.tech.id, kind, j.image.id if mode == "per-image" else None)].append(j)
    out = {}
    for (_, kind, _), group in groups.items():
        span = postprocess.limits(kind, [j.result for j in group], manifest.gallery.outlier_perc)
        out.update({id(j): span for j in group})
    return out


def _stops(colormap: str, n: int = 9) -> list[str]:
    rgb = postprocess.apply_colormap(np.linspace(0.0, 1.0, n), colormap)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb.tolist()]


def colour_scales(colormap: str | None = None, outlier_perc: float = postprocess.OUTLIER_PERC) -> dict[str, ColourScale]:
    """The colour bar of every variant key, with what its ends mean."""
    heat = colormap or postprocess.DEFAULT_COLORMAP
    div = postprocess.DEFAULT_DIVERGING
    clip = f"the top {outlier_perc:g} % of magnitudes clipped" if outlier_perc else "no clipping"
    lo_h, hi_h = postprocess.ENDS[heat]
    lo_d, hi_d = postprocess.ENDS[div]
    q = postprocess.QUANTITY
    grey = _stops("gray")
    scales = [
        ColourScale("color", "gray", grey, q["color"], f"dark: negative ({clip})", "bright: positive", "mid grey: 0"),
        ColourScale("saliency", "gray", grey, q["saliency"], "black: 0", f"white: largest ({clip})"),
        ColourScale("positive", "gray", grey, q["positive"], "black: 0", f"white: largest ({clip})"),
        ColourScale("negative", "gray", grey, q["negative"], "black: 0", f"white: largest ({clip})"),
        ColourScale("map", "gray", grey, q["map"], "black: lowest", "white: highest"),
        ColourScale("heatmap", heat, _stops(heat), q["heatmap"], f"{lo_h}: lowest", f"{hi_h}: highest"),
        ColourScale("overlay", heat, _stops(heat), q["overlay"], f"{lo_h}: lowest", f"{hi_h}: highest"),
        ColourScale("diverging", div, _stops(div), q["diverging"], f"{lo_d}: negative", f"{hi_d}: positive ({clip})",
                    "white: 0"),
    ]
    return {s.key: s for s in scales}


def _raw_maps_zip(jobs: list[Job], parts: dict[str, str]) -> bytes:
    """Every successful cell's raw map of one model as ``<image>/<technique>.npy`` (float16), in
    a zip whose bytes depend only on the maps (a row that reads no image under ``_/``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for j in sorted(jobs, key=lambda j: (j.image.id, j.tech.id)):
            npy = io.BytesIO()
            np.save(npy, j.result.astype(np.float16), allow_pickle=False)  # type: ignore[union-attr]
            info = zipfile.ZipInfo(f"{_folder(j)}/{parts[j.tech.id]}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, npy.getvalue())
    return buf.getvalue()


#: Each metric a metrics table shows, with its category: the gallery's own scores, then ``[metrics] compute``'s.
TABLE_CATEGORIES: dict[str, str] = {**GALLERY_CATEGORIES, **{k: m.category for k, m in METRICS.items()}}


def _better(key: str) -> str:
    """Which way ``key`` is better, "higher" or "lower", as its declaration says."""
    return SCORES[key][3] if key in SCORES else "higher" if METRICS[key].higher_is_better else "lower"


def metric_tables(cells: list[Cell], techniques: list[TechniqueRecord], images: int,
                  models: list[str]) -> list[MetricTable]:
    """Each model's metrics table (``models``: their ids in page order): every metric of
    :data:`TABLE_CATEGORIES` its successful cells have, ordered by category, averaged per technique
    over the cells that have it (to 6 decimals) and ranked in its column by its direction, means
    equal to the 4 decimals the pages show sharing a rank; ``images`` is the gallery's image count.
    A model without such a metric gets no table."""
    keys = list(TABLE_CATEGORIES)
    out = []
    for model_id in models:
        values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for c in cells:
            if c.model_id == model_id and c.status == "ok":
                for k, v in c.metrics.items():
                    if k in TABLE_CATEGORIES:
                        values[c.technique_id][k].append(float(v))
        if not values:
            continue
        shown = sorted({k for per in values.values() for k in per},
                       key=lambda k: (CATEGORIES.index(TABLE_CATEGORIES[k]), keys.index(k)))
        columns = [MetricColumn(k, TABLE_CATEGORIES[k], _better(k)) for k in shown]
        rows: dict[str, dict[str, MetricValue]] = {t.id: {} for t in techniques if t.id in values}
        for col in columns:
            means = {t: round(float(np.mean(per[col.key])), 6) for t, per in values.items() if col.key in per}
            sign = 1 if col.better == "higher" else -1
            shown = {t: sign * round(mean, 4) for t, mean in means.items()}
            for t, mean in means.items():
                rank = 1 + sum(other > shown[t] for other in shown.values())
                rows[t][col.key] = MetricValue(mean, len(values[t][col.key]), rank, rank == 1 and len(means) > 1)
        out.append(MetricTable(model_id, images, columns, rows, _agreement(columns, rows)))
    return out


def _agreement(columns: list[MetricColumn], rows: dict[str, dict[str, MetricValue]]) -> list[MetricAgreement]:
    """The meta-evaluation of a model's table: per category of two metrics or more, the mean
    Kendall's tau-b of their columns' means over the techniques (:func:`galleryvis.metrics.agreement`);
    a category whose metrics share fewer than two ranked techniques is left out."""
    out = []
    for category in dict.fromkeys(c.category for c in columns):
        mine = [c for c in columns if c.category == category]
        scores = {c.key: [rows[t][c.key].mean if c.key in rows[t] else float("nan") for t in rows] for c in mine}
        ranked = sum(all(c.key in rows[t] for c in mine) for t in rows)
        if len(mine) < 2 or ranked < 2:
            continue
        found = agreement(scores, higher_is_better=[c.better == "higher" for c in mine])
        if np.isfinite(found.mean):
            out.append(MetricAgreement(category, [c.key for c in mine], round(found.mean, 4), ranked))
    return out


#: How many of a segmentation's classes its legend names (most pixels first); the explained one always.
LEGEND_CLASSES = 6


def _segmentation_records(adapter: ModelAdapter, ws: Workspace, preds: dict[str, np.ndarray],
                          labels: dict[str, np.ndarray], out: Path, folder: str, alpha: float,
                          crop: Callable[[LoadedImage, ModelAdapter], Image.Image]
                          ) -> tuple[dict[str, Segmentation], dict[str, Variant]]:
    """A segmentation model's pictures under ``folder``: per image id, its prediction (the label
    map over its crop, the class the image's target explains outlined, with the legend) and,
    where the image's target gives a region, its crop with the region outlined."""
    segs: dict[str, Segmentation] = {}
    regions: dict[str, Variant] = {}
    for img in ws.images.values():
        if img.ref.id not in labels and not isinstance(img.ref.target, Region):
            continue
        target, region = resolve_target(adapter, img.ref.target, preds[img.ref.id])[:2]
        base = crop(img, adapter)
        stem = f"{folder}/{img.ref.id}/_"
        if region is not None:
            alt = f"Image {img.ref.name} as model {adapter.id} sees it, the region {region.name} outlined"
            regions[img.ref.id] = _region(postprocess.outline(base, adapter.region_mask(region)), out, stem, "Region", alt)
        if img.ref.id not in labels:
            continue
        lab = labels[img.ref.id]
        shares = preds[img.ref.id]
        shown = sorted({int(k) for k in np.flatnonzero(shares > 0)} | {target}, key=lambda k: (-shares[k], k))
        shown = [k for i, k in enumerate(shown) if i < LEGEND_CLASSES or k == target]
        classes = [LabelClass(k, adapter.label(k), round(float(shares[k]), 4), postprocess.label_colour(k), k == target)
                   for k in shown]
        alt = (f"Prediction of model {adapter.id} on image {img.ref.name}: its label map, "
               f"{adapter.label(target)} outlined")
        src, thumb, size, tsize = _save(postprocess.label_picture(lab, base, alpha, target), out, f"{stem}prediction.webp")
        png = f"{stem}prediction-labels.png"
        atomic_write(out / png, postprocess.label_png(lab))
        segs[img.ref.id] = Segmentation(Variant("prediction", "Prediction", src, thumb, alt, size, tsize), png, classes)
    return segs, regions


def _region(pic: Image.Image, out: Path, stem: str, label: str, alt: str) -> Variant:
    """A column's original picture with what it explains outlined (a region, a detection), saved."""
    src, thumb, size, tsize = _save(pic, out, f"{stem}region.webp")
    return Variant("region", label, src, thumb, alt, size, tsize)


def _truth_records(adapter: ModelAdapter, ws: Workspace, out: Path, folder: str,
                   crop: Callable[[LoadedImage, ModelAdapter], Image.Image], outlined: Collection[str]
                   ) -> dict[str, Variant]:
    """Per image id with ground truth (``mask`` or ``box``), the model's crop with it outlined:
    where the localisation metrics look for the object; not for the images in ``outlined``, whose
    target outlines its own region or detection."""
    found: dict[str, Variant] = {}
    for img in ws.images.values():
        truth = None if img.ref.id in outlined else truth_mask(adapter, img)
        if truth is not None:
            what = f"its mask {img.ref.mask.name}" if img.ref.mask is not None else "its box"
            alt = f"Image {img.ref.name} as model {adapter.id} sees it, the object ({what}) outlined"
            found[img.ref.id] = _region(postprocess.outline(crop(img, adapter), truth), out,
                                        f"{folder}/{img.ref.id}/_", "Ground truth", alt)
    return found


def _detection_records(adapter: ModelAdapter, ws: Workspace, preds: dict[str, np.ndarray], out: Path, folder: str,
                       crop: Callable[[LoadedImage, ModelAdapter], Image.Image]
                       ) -> tuple[dict[str, Detected], dict[str, Variant]]:
    """A detector's pictures under ``folder``, per image id: its detections (every kept one in its
    class's colour, named with its score, the one the image's target explains outlined) and its
    crop with the explained detection outlined and the others faint."""
    found: dict[str, Detected] = {}
    regions: dict[str, Variant] = {}
    if adapter.task != "detection":
        return found, regions
    for img in ws.images.values():
        dets = preds[img.ref.id]
        try:
            ref, rank = resolve_target(adapter, img.ref.target, dets, img.pil.size)[3:]
            k = rank[0] - 1  # type: ignore[index]
        except ValueError:  # the plan reported it
            ref, k = None, -1
        boxes = [DetectedBox(int(d[5]), adapter.label(int(d[5])), round(float(d[4]), 4),
                             postprocess.label_colour(int(d[5])), [round(float(v), 2) for v in d[:4]], i == k)
                 for i, d in enumerate(dets)]
        coords: list[postprocess.Box] = [(b.box[0], b.box[1], b.box[2], b.box[3]) for b in boxes]
        colours = [b.colour for b in boxes]
        named = f"{boxes[k].label} {boxes[k].score:.2f}" if ref is not None else ""
        base = crop(img, adapter)
        stem = f"{folder}/{img.ref.id}/_"
        pic = postprocess.draw_boxes(base, coords, colours, [f"{b.label} {b.score:.2f}" for b in boxes])
        alt = f"Detections of model {adapter.id} on image {img.ref.name}: {len(boxes)} boxes"
        if ref is not None:
            pic, alt = postprocess.outline_box(pic, ref), f"{alt}, {named} outlined"
            others = [i for i in range(len(boxes)) if i != k]
            faint = postprocess.draw_boxes(base, [coords[i] for i in others], [colours[i] for i in others], alpha=0.5)
            regions[img.ref.id] = _region(postprocess.outline_box(faint, ref, named), out, stem, "Detection",
                                          f"Image {img.ref.name} as model {adapter.id} sees it, the detection "
                                          f"{named} outlined, the others faint")
        src, thumb, size, tsize = _save(pic, out, f"{stem}detections.webp")
        found[img.ref.id] = Detected(Variant("detections", "Detections", src, thumb, alt, size, tsize), boxes)
    return found, regions


def write_site(manifest: Manifest, ws: Workspace, jobs: list[Job], preds: dict[str, dict[str, np.ndarray]],
               rankings: list[Ranking], counts: dict[str, int], timings: Callable[[], dict[str, Any]], out: Path,
               provenance: dict[str, Any] | None = None, stages: Stages | None = None,
               labels: dict[str, dict[str, np.ndarray]] | None = None,
               references: dict[tuple[str, str], RowReferences] | None = None) -> None:
    """Render every page and picture into a staged folder that replaces ``out`` when complete;
    ``counts`` (computed / cached / failed) show on the pages, ``timings()`` (asked for once the
    pages are written, so it holds their time too: ``stages`` gets the pictures and pages
    stages) goes to build.json and ``provenance`` (versions, device, seeds, fingerprints,
    manifest hash, date) to the build page; ``labels``, each segmentation model's label map
    per image id (:func:`~galleryvis.build.jobs.label_maps`), its "Prediction" row; ``references``,
    each concept row's reference examples (:func:`~galleryvis.build.reference_pass.compute_references`)."""
    from galleryvis.render import render_site

    stages = stages or Stages()
    with staged(out) as tmp:
        t_pictures = time.perf_counter()
        fitted: dict[tuple[str, Any], Image.Image] = {}

        def crop(img: LoadedImage, adapter: ModelAdapter | None) -> Image.Image:
            """The model's crop of the image (its size, crop and interpolation); 224 px for the listing."""
            key = (img.ref.id, repr(adapter.preprocessing) if adapter else None)
            if key not in fitted:
                fitted[key] = adapter.crop(img.pil) if adapter else fit(img.pil, 224)
            return fitted[key]

        image_records = []
        for img in ws.images.values():
            src, thumb, size, tsize = _save(crop(img, None), tmp, f"img/input/{img.ref.id}.webp")
            image_records.append(ImageRecord(img.ref.id, img.ref.name, src, thumb, size, tsize))
        # File-name parts, distinct even for ids that differ only in case or punctuation.
        ids = [m.id for m in manifest.models], [t.id for t in manifest.techniques]
        parts = dict(zip(ids[0], unique_slugs(ids[0]))), dict(zip(ids[1], unique_slugs(ids[1])))
        model_records = []
        for spec in manifest.models:
            a = ws.models[spec.id]
            if a.task == "detection":  # a detector's: its best detections
                top5 = {i: [Prediction(int(d[5]), a.label(int(d[5])), round(float(d[4]), 4)) for d in p[:5]]
                        for i, p in preds[spec.id].items()}
            else:  # a segmentation's classes: those it shows
                top5 = {i: [Prediction(int(k), a.label(int(k)), round(float(p[k]), 4)) for k in np.argsort(-p)[:5]
                            if p[k] > 0] for i, p in preds[spec.id].items()}
            layers = {}
            for t in manifest.techniques:
                lay = layer_for(a, t)
                if lay is not None:
                    layers[t.id] = lay if isinstance(lay, str) else ", ".join(lay)
            segs, regions = _segmentation_records(a, ws, preds[spec.id], (labels or {}).get(spec.id, {}), tmp,
                                                  f"img/{parts[0][spec.id]}", manifest.gallery.alpha, crop)
            found, boxed = _detection_records(a, ws, preds[spec.id], tmp, f"img/{parts[0][spec.id]}", crop)
            truth = _truth_records(a, ws, tmp, f"img/{parts[0][spec.id]}", crop, regions.keys() | boxed.keys())
            model_records.append(ModelRecord(a.id, a.name, a.description, top5, layers, random_weights=a.random,
                                             segmentations=segs, regions={**truth, **regions, **boxed}, detections=found,
                                             task=a.task))
        shared = shared_limits(manifest, jobs)
        scales = colour_scales(manifest.gallery.colormap, manifest.gallery.outlier_perc)
        cells = [_cell_record(job, ws, tmp, manifest, crop(ws.image(job), ws.adapter(job)), parts,
                              shared.get(id(job)), set(scales), preds[job.model.id][job.image.id]) for job in jobs]
        downloads = {}
        for spec in manifest.models if manifest.gallery.raw_maps else ():
            done = [j for j in jobs if j.model.id == spec.id and j.result is not None and not j.error]
            if done:
                rel = f"downloads/{parts[0][spec.id]}-maps.zip"
                atomic_write(tmp / rel, _raw_maps_zip(done, parts[1]))
                downloads[spec.id] = rel
        modes = {_scale_mode(manifest, t.id) for t in manifest.techniques}
        scaling = "; ".join(SCALING[m] for m in ("per-map", "per-image", "per-row") if m in modes)
        techniques = _technique_records(manifest)
        gallery = Gallery(manifest.gallery.title, manifest.gallery.description, image_records, model_records,
                          techniques, cells, rankings, counts, scales=scales,
                          scaling=scaling, base_url=manifest.gallery.base_url, build=provenance or {},
                          downloads=downloads,
                          atlases=concept_atlases(jobs, cells, reference_records(references or {}, ws, tmp, parts[0])),
                          metric_notes={name: [METRICS[name].question, _better(name)]
                                        for name in manifest.metrics.compute},
                          metric_tables=metric_tables(cells, techniques, len(image_records),
                                                      [spec.id for spec in manifest.models]))
        t_pages = time.perf_counter()
        stages.add("pictures", t_pages - t_pictures)
        render_site(gallery, tmp)
        atomic_write(tmp / RECORDS_FILE, gallery.to_json())
        stages.add("pages", time.perf_counter() - t_pages)
        atomic_write(tmp / "build.json", json.dumps({**timings(), "provenance": provenance or {}}, indent=2,
                                                   sort_keys=True).encode())
