"""Manifest -> plan -> compute (through the cache) -> pictures -> records -> site."""
from __future__ import annotations

import json
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import postprocess, registry, scoring
from .cache import Cache, CacheWarning, atomic_write, cache_key
from .engine import attribute_many, default_batch_size
from .hooks import capture, prepared
from .synthesis import synthesize
from .synthesis.api import spec_of
from .images import file_sha256, fit, load_image
from .manifest import Manifest, ManifestError, TechniqueSpec, check_against_models
from .models import ModelAdapter, ModelError, choose_device, load_model
from .naming import unique_slugs
from .records import Cell, Gallery, ImageRecord, ModelRecord, Prediction, Ranking, TechniqueRecord, Variant
from .sitefiles import build_lock, staged


@dataclass
class Options:
    """How to build: cache location and use, failure policy, output verbosity."""

    cache_dir: Path | None = None
    use_cache: bool = True
    force: bool = False
    dry_run: bool = False
    quiet: bool = False
    fail_fast: bool = False
    batch_size: int | None = None  # None: 8 on the CPU, 32 on a GPU
    wait: float = 0.0


@dataclass
class Summary:
    """What a build did: cells computed / cached / failed, seconds per technique."""

    computed: int = 0
    cached: int = 0
    failed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    total_seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.computed} computed, {self.cached} cached, {self.failed} failed "
                f"in {self.total_seconds:.1f} s")


@dataclass
class _Img:
    id: str
    name: str
    path: Path
    sha: str
    pil: Image.Image
    target: int | str | None
    _inputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def input_for(self, adapter: ModelAdapter) -> torch.Tensor:
        """The model's normalized (3, size, size) input for this image, made once per model."""
        if adapter.id not in self._inputs:
            self._inputs[adapter.id] = adapter.preprocess(self.pil)
        return self._inputs[adapter.id]


@dataclass
class _Job:
    """One cell to produce: its cache key and what computing it needs."""

    model: ModelAdapter
    image: _Img
    tech: TechniqueSpec
    params: dict[str, Any]
    layer: Any
    target: int
    key: str
    result: np.ndarray | None = None
    error: str = ""
    cached: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    trace: list[float] = field(default_factory=list)
    unit: int | None = None  # the channel a synthesis cell optimized

    @property
    def family(self) -> str:
        return registry.get(self.tech.name).family


class Progress:
    """A bar with ETA on a terminal (tqdm), one plain line per step otherwise, nothing if quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.quiet, self.total, self.done = quiet, total, 0
        self._seen: set[int] = set()
        self.start = time.monotonic()
        self.bar = None
        if not quiet and total and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", file=sys.stderr)

    def mark(self, jobs: Any, what: str) -> None:
        """Count ``jobs`` as done (each once, however often it is marked)."""
        fresh = [j for j in jobs if id(j) not in self._seen]
        self._seen.update(id(j) for j in fresh)
        if fresh:
            self.step(len(fresh), what)

    def step(self, n: int, what: str) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.set_postfix_str(what[:40])
            self.bar.update(n)
        elif not self.quiet and self.total:
            elapsed = time.monotonic() - self.start
            eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            print(f"[{self.done}/{self.total}] {what} (eta {eta:.0f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cache_dir(manifest: Manifest, opts: Options) -> Path:
    if opts.cache_dir is not None:
        return opts.cache_dir
    base = manifest.path.parent if manifest.path is not None else Path.cwd()
    return base / ".galleryvis-cache"


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
    if errors:
        raise ManifestError(errors)
    return adapters


def _name_parts(ids: list[str]) -> dict[str, str]:
    return dict(zip(ids, unique_slugs(ids)))


def read_images(manifest: Manifest) -> list[_Img]:
    """The manifest's images, decoded, hashed and given unique slug ids (used by build and explain)."""
    ids = unique_slugs([s.path.stem for s in manifest.images])
    return [_Img(i, s.path.name, s.path, file_sha256(s.path), load_image(s.path), s.target)
            for i, s in zip(ids, manifest.images)]


def _target_index(adapter: ModelAdapter, target: int | str | None, top1: int) -> int:
    if target is None:
        return top1
    if isinstance(target, int):
        return target
    lowered = [name.lower() for name in adapter.labels]
    return lowered.index(target.lower())


def _prediction_key(adapter: ModelAdapter, img: _Img) -> str:
    return cache_key(kind="predict", image=img.sha, model=adapter.name, fingerprint=adapter.fingerprint,
                     size=adapter.size, mean=adapter.mean, std=adapter.std)


def _predictions(adapter: ModelAdapter, images: list[_Img], cache: Cache) -> dict[str, np.ndarray]:
    """Softmax probabilities per image id, from the cache when possible."""
    out: dict[str, np.ndarray] = {}
    for img in images:
        key = _prediction_key(adapter, img)
        entry = cache.get(key)
        if entry is None:
            probs = adapter.logits(img.input_for(adapter)[None]).softmax(1)[0].numpy()
            cache.put(key, probs.astype(np.float32), {"image": img.name, "model": adapter.id})
        else:
            probs = entry.array
        out[img.id] = probs
    return out


def _layer(adapter: ModelAdapter, tspec: TechniqueSpec) -> Any:
    """The technique entry's own layer, else the model's layer for that technique, else the
    model's default CAM layer for techniques that need one."""
    tech = registry.get(tspec.name)
    chosen = tspec.layer if tspec.layer is not None else adapter.layer_for(tech.name)
    if chosen is None and tech.layer in ("one", "many"):
        chosen = adapter.default_layer()
    if tech.layer == "many" and isinstance(chosen, str):
        chosen = (chosen,)
    return chosen if chosen is None or isinstance(chosen, str) else tuple(chosen)


def plan(manifest: Manifest, adapters: dict[str, ModelAdapter], images: list[_Img], cache: Cache,
         force: bool) -> tuple[list[_Job], dict[str, dict[str, np.ndarray]]]:
    """Every cell with its cache key, and each model's predictions; cached cells are marked."""
    jobs: list[_Job] = []
    preds: dict[str, dict[str, np.ndarray]] = {}
    device_class = "cpu"
    for spec in manifest.models:
        adapter = adapters[spec.id]
        device_class = adapter.device.type
        preds[spec.id] = _predictions(adapter, images, cache)
        for tspec in manifest.techniques:
            tech = registry.get(tspec.name)
            params = registry.resolve_params(tech, tspec.params)
            layer = _layer(adapter, tspec)
            for img in images:
                target = _target_index(adapter, img.target, int(preds[spec.id][img.id].argmax()))
                key = cache_key(kind="map" if tech.family == "attribution" else "synthesis", image=img.sha,
                                model=adapter.name, fingerprint=adapter.fingerprint, size=adapter.size,
                                mean=adapter.mean, std=adapter.std, technique=tech.name, version=tech.version,
                                params=params, layer=layer, target=target, device=device_class)
                job = _Job(adapter, img, tspec, params, layer, target, key)
                if not force and cache.has(key):
                    job.cached = True
                jobs.append(job)
    return jobs, preds


def compute(jobs: list[_Job], batch_size: int, cache: Cache, progress: Progress,
             fail_fast: bool, seconds: dict[str, float]) -> None:
    """Compute every job: attribution cells grouped per model and technique set with images
    batched, then synthesis cells one by one; each result goes to the cache as it is done
    (used by build and explain)."""
    by_cell: dict[tuple[str, str], list[_Job]] = defaultdict(list)
    for job in jobs:
        if job.family == "attribution":
            by_cell[(job.model.id, job.image.id)].append(job)
    groups: dict[tuple[str, tuple[str, ...]], list[list[_Job]]] = defaultdict(list)
    for (model_id, _), cell_jobs in by_cell.items():
        groups[(model_id, tuple(j.tech.id for j in cell_jobs))].append(cell_jobs)
    for cells in groups.values():
        for start in range(0, len(cells), batch_size):
            chunk = cells[start:start + batch_size]
            _compute_chunk(chunk, batch_size, fail_fast, seconds, progress)
            for job in (j for cell_jobs in chunk for j in cell_jobs):
                if job.result is not None:
                    _store(cache, job)
            progress.mark([j for c in chunk for j in c], f"{chunk[0][0].model.id}: {len(chunk)} image(s)")
    for job in (j for j in jobs if j.family == "synthesis"):
        t0 = time.perf_counter()
        try:
            _synthesize(job)
        except Exception as exc:  # noqa: BLE001  (recorded in the cell; the build goes on)
            if fail_fast:
                raise
            job.error = _one_line(exc)
        else:
            _store(cache, job)
        seconds[job.tech.id] = seconds.get(job.tech.id, 0.0) + time.perf_counter() - t0
        progress.mark([job], f"{job.model.id}: {job.tech.id} for {job.image.name}")


def _store(cache: Cache, job: _Job) -> None:
    """Put a computed cell in the cache; a synthesis cell keeps its trace and unit beside it."""
    meta: dict[str, Any] = {"technique": job.tech.name, "params": job.params, "image": job.image.name,
                            "model": job.model.id}
    if job.family == "synthesis":
        meta.update(trace=job.trace, unit=job.unit)
    cache.put(job.key, job.result, meta)


def _top_channel(adapter: ModelAdapter, x: torch.Tensor, layer: str) -> int:
    """The channel of ``layer`` with the highest mean activation on ``x`` (one image)."""
    with prepared(adapter.model), torch.no_grad(), capture(adapter.model, [layer]) as acts:
        adapter.model(x)
    a = acts[layer]
    return int(a.flatten(2).mean(2)[0].argmax()) if a.dim() == 4 else int(a[0].argmax())


def _synthesize(job: _Job) -> None:
    """One synthesis cell: the image's own class (target) or its most active channel (unit)."""
    adapter = job.model
    spec = spec_of(job.tech.name)
    x = job.image.input_for(adapter)[None].to(adapter.device)
    kwargs: dict[str, Any] = {"mean": adapter.mean, "std": adapter.std}
    if job.layer is not None:
        kwargs["layer"] = job.layer
    if spec.image == "required":
        kwargs["image"] = x
    if spec.unit == "target":
        kwargs["target"] = job.target
    elif spec.unit == "channel":
        job.unit = kwargs["channel"] = _top_channel(adapter, x, job.layer)
    result = synthesize(adapter.model, job.tech.name, **kwargs, **job.params)
    image = result.image[0].numpy()
    if not np.isfinite(image).all():
        raise FloatingPointError(f"{job.tech.name} produced NaN or Inf values")
    job.result = image
    job.trace = [round(float(v), 5) for v in result.trace[:, 0]]


def _compute_chunk(chunk: list[list[_Job]], batch_size: int, fail_fast: bool, seconds: dict[str, float],
                   progress: Progress) -> None:
    """One attribute_many call per technique-id group; on failure, retry each technique alone
    (so one failing technique does not take the others down), halving the batch on OOM."""
    adapter = chunk[0][0].model
    x = torch.stack([cell[0].image.input_for(adapter) for cell in chunk])
    targets = [cell[0].target for cell in chunk]
    columns = list(zip(*chunk))  # one tuple of jobs (one per image) per technique
    by_name: dict[str, list[tuple[_Job, ...]]] = defaultdict(list)
    for col in columns:
        by_name[col[0].tech.name].append(col)
    shared = [cols[0] for cols in by_name.values()]
    rest = [col for cols in by_name.values() for col in cols[1:]]
    for group in ([shared] + [[c] for c in rest]):
        try:
            _run(adapter, x, targets, group, batch_size, seconds, progress)
        except Exception:  # noqa: BLE001  (isolate: retry one technique and one image at a time)
            if fail_fast:
                raise
            for col in group:
                for i, job in enumerate(col):
                    try:
                        _run(adapter, x[i:i + 1], targets[i:i + 1], [(job,)], batch_size, seconds, progress)
                    except Exception as exc:  # noqa: BLE001
                        job.error = _one_line(exc)


def _run(adapter: ModelAdapter, x: torch.Tensor, targets: list[int], cols: list[tuple[_Job, ...]],
         batch_size: int, seconds: dict[str, float], progress: Progress) -> None:
    names = [c[0].tech.name for c in cols]
    col_of = {c[0].tech.name: c for c in cols}
    layers = {c[0].tech.name: c[0].layer for c in cols}
    params = {c[0].tech.name: c[0].params for c in cols}
    while True:
        try:
            t0 = time.perf_counter()
            maps = attribute_many(adapter.model, x, names, targets, layers, params, batch_size=batch_size,
                                  progress=lambda name, _n: progress.mark(col_of[name], f"{adapter.id}: {name}"),
                                  mean=adapter.mean, std=adapter.std)
            break
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
    spent = (time.perf_counter() - t0) / len(cols)
    for col in cols:
        name = col[0].tech.name
        seconds[col[0].tech.id] = seconds.get(col[0].tech.id, 0.0) + spent
        arr = maps[name].numpy()
        if not np.isfinite(arr).all():
            raise FloatingPointError(f"{name} produced NaN or Inf values")
        for i, job in enumerate(col):
            job.result = arr[i]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def pictures(tech: registry.Technique, raw: np.ndarray, image: Image.Image, colormap: str | None = None,
             alpha: float = 0.5) -> list[tuple[str, str, Image.Image]]:
    """The display variants of one cell's raw map, chosen by what kind of map the technique makes."""
    kind = "cam" if tech.kind == "gradient" and raw.shape[0] == 1 else tech.kind  # one channel: a heatmap
    return postprocess.variants(kind, raw.astype(np.float32), image, colormap=colormap, alpha=alpha,
                                guided=tech.split_sign)


def _save(img: Image.Image, out: Path, rel: str, previous: Path | None = None,
          thumb_size: int = 160) -> tuple[str, str]:
    """Save a picture and its thumbnail under ``out``, reusing ``previous`` (the last site)'s
    files where their pixels are the same (an unchanged rebuild then encodes nothing)."""
    thumb_rel = "thumbs/" + rel
    for path, pic in ((rel, img), (thumb_rel, postprocess.thumbnail(img, thumb_size))):
        reuse = previous / path if previous is not None else None
        postprocess.save_png(pic, out / path, reuse if reuse is not None and reuse.is_file() else None)
    return rel, thumb_rel


def _cell_record(job: _Job, out: Path, manifest: Manifest, image_pil: Image.Image,
                 parts: tuple[dict[str, str], dict[str, str]], previous: Path | None = None) -> Cell:
    """The cell's record; its pictures go under the model's and the technique's name ``parts``
    (reusing ``previous``'s files where they are the same pictures)."""
    tech = registry.get(job.tech.name)
    label = job.model.label(job.target)
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
        alt = f"{_title(job.tech.id, tech.name)} {vlabel.lower()}, model {job.model.id}, " \
              f"image {job.image.name}, class {label} ({job.target})"
        variants.append(Variant(key, vlabel, src, thumb, alt))
    target = job.target if label == job.model.label(job.target) else None
    return Cell(job.model.id, job.image.id, job.tech.id, target, label, "ok", variants=variants,
                metrics=dict(job.metrics), curves=dict(job.curves), trace=list(job.trace))


def _technique_records(manifest: Manifest) -> list[TechniqueRecord]:
    out = []
    for tspec in manifest.techniques:
        tech = registry.get(tspec.name)
        params = registry.resolve_params(tech, tspec.params)
        out.append(TechniqueRecord(tspec.id, tech.name, _title(tspec.id, tech.name), tech.family,
                                   {k: v for k, v in params.items()}, tech.doc or tech.summary, tech.paper))
    return out


def _title(tid: str, name: str) -> str:
    """The row title: the technique's display name, plus what sets this entry apart
    (``"layercam (block 4)"`` -> ``"LayerCAM (block 4)"``)."""
    base = registry.get(name).title
    if tid == name:
        return base
    rest = tid[len(name):].strip() if tid.startswith(name) else tid
    return f"{base} {rest}" if rest.startswith("(") else f"{base} ({rest})"


def build(manifest: Manifest, opts: Options) -> Summary:
    """Build the site of ``manifest``: every cell from the cache or computed, then rendered
    into a temporary folder that replaces the output folder only when complete."""
    t_start = time.perf_counter()
    adapters = load_models(manifest)
    images = read_images(manifest)
    cache = Cache(_cache_dir(manifest, opts), enabled=opts.use_cache)
    out = manifest.gallery.output
    summary = Summary()
    with build_lock(cache.root if opts.use_cache else out.parent, opts.wait):
        jobs, preds = plan(manifest, adapters, images, cache, opts.force)
        todo = load_cached(jobs, cache)
        summary.plan = _plan_lines(jobs)
        if opts.dry_run:
            return summary
        progress = Progress(len(todo) + scoring.task_count(jobs, manifest.metrics), opts.quiet)
        device = next(iter(adapters.values())).device if adapters else torch.device("cpu")
        batch_size = opts.batch_size or default_batch_size(device)
        try:
            compute(todo, batch_size, cache, progress, opts.fail_fast, summary.seconds)
            t_scores = time.perf_counter()
            rankings = scoring.score(jobs, manifest.metrics, cache, batch_size, progress)
            if manifest.metrics.enabled:
                summary.seconds["metrics"] = time.perf_counter() - t_scores
        finally:
            progress.close()
        summary.computed = sum(1 for j in todo if not j.error)
        summary.cached = sum(1 for j in jobs if j.cached)
        summary.failed = sum(1 for j in jobs if j.error)
        summary.failures = [f"{j.model.id} / {j.image.name} / {j.tech.id}: {j.error}" for j in jobs if j.error]
        summary.total_seconds = time.perf_counter() - t_start
        _write_site(manifest, adapters, images, jobs, preds, rankings, summary, out)
    return summary


def referenced_keys(manifest: Manifest, opts: Options) -> set[str]:
    """Every cache key the manifest uses (predictions and maps)."""
    adapters = load_models(manifest)
    images = read_images(manifest)
    cache = Cache(_cache_dir(manifest, opts), enabled=opts.use_cache)
    jobs, _ = plan(manifest, adapters, images, cache, force=False)
    return {j.key for j in jobs} | {_prediction_key(a, i) for a in adapters.values() for i in images}


def load_cached(jobs: list[_Job], cache: Cache) -> list[_Job]:
    """Fill cached jobs from the cache; return the jobs still to compute (a corrupt entry is
    reported on stderr and its job recomputed)."""
    todo = [j for j in jobs if not j.cached]
    for j in jobs:
        if not j.cached:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CacheWarning)
            entry = cache.get(j.key)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        if entry is None:
            j.cached = False
            todo.append(j)
        else:
            j.result = entry.array
            j.trace = list(entry.meta.get("trace", []))
            j.unit = entry.meta.get("unit")
    return todo


def _plan_lines(jobs: list[_Job]) -> list[str]:
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for j in jobs:
        counts[(j.model.id, j.tech.id)][0 if not j.cached else 1] += 1
    return [f"{m} / {t}: {c[0]} to compute, {c[1]} cached" for (m, t), c in counts.items()]


def _write_site(manifest: Manifest, adapters: dict[str, ModelAdapter], images: list[_Img], jobs: list[_Job],
                preds: dict[str, dict[str, np.ndarray]], rankings: list[Ranking], summary: Summary,
                out: Path) -> None:
    from .render import render_site

    with staged(out) as tmp:
        fitted: dict[tuple[str, int], Image.Image] = {}

        def crop(img: _Img, size: int) -> Image.Image:
            if (img.id, size) not in fitted:
                fitted[(img.id, size)] = fit(img.pil, size)
            return fitted[(img.id, size)]

        image_records = []
        for img in images:
            src, thumb = _save(crop(img, 224), tmp, f"img/input/{img.id}.png", out)
            image_records.append(ImageRecord(img.id, img.name, src, thumb))
        model_records = []
        for spec in manifest.models:
            a = adapters[spec.id]
            top5 = {i: [Prediction(int(k), a.label(int(k)), round(float(p[k]), 4)) for k in np.argsort(-p)[:5]]
                    for i, p in preds[spec.id].items()}
            layers = {}
            for t in manifest.techniques:
                lay = _layer(a, t)
                if lay is not None:
                    layers[t.id] = lay if isinstance(lay, str) else ", ".join(lay)
            model_records.append(ModelRecord(a.id, a.name, a.description, top5, layers))
        # File-name parts, distinct even for ids that differ only in case or punctuation.
        parts = _name_parts([m.id for m in manifest.models]), _name_parts([t.id for t in manifest.techniques])
        cells = [_cell_record(job, tmp, manifest, crop(job.image, job.model.size), parts, out) for job in jobs]
        gallery = Gallery(manifest.gallery.title, manifest.gallery.description, image_records, model_records,
                          _technique_records(manifest), cells, rankings,
                          {"computed": summary.computed, "cached": summary.cached, "failed": summary.failed})
        render_site(gallery, tmp)
        timings = {"summary": {"computed": summary.computed, "cached": summary.cached, "failed": summary.failed,
                               "total_seconds": round(summary.total_seconds, 3)},
                   "seconds_per_technique": {k: round(v, 3) for k, v in sorted(summary.seconds.items())},
                   "failures": summary.failures}
        atomic_write(tmp / "build.json", json.dumps(timings, indent=2, sort_keys=True).encode())

