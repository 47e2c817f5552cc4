"""A build in stages: manifest -> plan (:mod:`.jobs`) -> compute (:mod:`.executor`, through the
cache) -> scores (:mod:`.scoring`) -> site (:mod:`.sitewriter`), with one :mod:`.progress` bar."""
from __future__ import annotations

import datetime
import hashlib
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from galleryvis import families
from galleryvis.build import reference_pass, scoring
from galleryvis.storage import stamp
from galleryvis.storage.cache import CACHE_DIRNAME, Cache, CacheWarning
from galleryvis.build.executor import Executor, LocalExecutor, chunking_key
from galleryvis.build.faults import Faults
from galleryvis.hooks import counting
from galleryvis.build.jobs import (Job, Workspace, label_map_key, label_maps, plan, plan_lines, prediction_key,
                                   workspace)
from galleryvis.config.manifest import Manifest
from galleryvis.build.progress import Progress, Stages, expected_passes
from galleryvis.storage.sitefiles import build_lock
from galleryvis.build.sitewriter import write_site


@dataclass
class Options:
    """How to build: cache location and use, failure policy, output verbosity, and the executor
    (local or Ray, with its workers, GPUs and CPUs)."""

    cache_dir: Path | str | None = None  # a folder or an fsspec URL; None: the manifest's, else beside it
    use_cache: bool = True
    force: bool = False
    dry_run: bool = False
    quiet: bool = False
    fail_fast: bool = False
    batch_size: int | None = None  # None: chunk sizes measured per model
    share_passes: bool = True  # off: every technique computed and scored in calls of its own
    wait: float = 0.0
    executor: str | None = None  # "local" or "ray"; None: the manifest's
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local Ray instance
    num_gpus: float | None = None  # None: the manifest's
    ray_workers: int | None = None  # None: the manifest's
    num_cpus: int | None = None  # None: the manifest's


@dataclass
class Summary:
    """What a build did: cells computed / cached / failed, seconds per technique and per stage,
    the jobs themselves (with their share of the time, for ``--profile``)."""

    computed: int = 0
    cached: int = 0
    failed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    total_seconds: float = 0.0
    stages: Stages = field(default_factory=Stages)
    jobs: list[Job] = field(default_factory=list)
    expected_passes: int = 0  # a dry run's estimate of the images computing its cells sends through the models
    faults: Faults | None = None  # workers restarted and tasks retried, by an executor that has workers

    def line(self) -> str:
        faults = f", {self.faults.line()}" if self.faults is not None else ""
        return (f"{self.computed} computed, {self.cached} cached, {self.failed} failed{faults} "
                f"in {self.total_seconds:.1f} s ({self.stages.line()})")

    def profile(self, top: int = 10) -> str:
        """A table of the stages and of the ``top`` costliest cells (compute + scoring seconds)."""
        total = sum(self.stages.seconds.values()) or 1.0
        lines = ["stage         seconds  share"]
        lines += [f"{name:<12} {sec:8.1f}  {100 * sec / total:4.0f} %" for name, sec in self.stages.seconds.items()]
        lines.append(f"model passes: {self.stages.passes} ({self.stages.images} images)")
        cells = sorted(self.jobs, key=lambda j: -sum(j.seconds.values()))[:top]
        lines.append(f"top {len(cells)} cells     compute  scoring")
        lines += [f"{j.model.id} / {j.image.name} / {j.tech.id}: {j.seconds.get('compute', 0.0):.2f} s"
                  f"  {j.seconds.get('scoring', 0.0):.2f} s" for j in cells if j.seconds]
        return "\n".join(lines)


def cache_dir(manifest: Manifest, opts: Options) -> Path | str:
    """``--cache-dir`` if given, else the manifest's ``[gallery] cache``, else
    ``.galleryvis-cache`` beside the manifest (or here); a folder or an fsspec URL."""
    if opts.cache_dir is not None:
        return opts.cache_dir
    if manifest.gallery.cache is not None:
        return manifest.gallery.cache
    base = manifest.path.parent if manifest.path is not None else Path.cwd()
    return base / CACHE_DIRNAME


def executor_for(manifest: Manifest, opts: Options, ws: Workspace) -> Executor:
    """The executor ``opts`` (else the manifest) asks for: local, or Ray (:mod:`.cluster`); with
    ``opts.batch_size`` None, each model runs at the chunk sizes measured for it."""
    batch_size = opts.batch_size
    if (opts.executor or manifest.gallery.executor) == "local":
        return LocalExecutor(ws, batch_size, opts.fail_fast, opts.share_passes)
    from galleryvis.build.cluster import RayExecutor

    gpus = opts.num_gpus if opts.num_gpus is not None else manifest.gallery.num_gpus
    return RayExecutor(manifest.root, manifest.gallery.plugins, batch_size, address=opts.ray_address,
                       num_gpus=gpus, num_cpus=opts.num_cpus or manifest.gallery.num_cpus,
                       workers=opts.ray_workers or manifest.gallery.ray_workers, fail_fast=opts.fail_fast,
                       share=opts.share_passes)


def build(manifest: Manifest, opts: Options, executor: Executor | None = None) -> Summary:
    """Build the site of ``manifest``: every cell from the cache or computed (by ``executor``;
    default: :func:`executor_for`), then rendered into a temporary
    folder that replaces the output folder only when complete. The summary says where the time
    went (:class:`~galleryvis.build.progress.Stages`). The build lock is taken before anything is
    loaded, so a second build fails at once."""
    cache = Cache(cache_dir(manifest, opts), enabled=opts.use_cache)
    lock_folder = cache.root if opts.use_cache and cache.root is not None else manifest.gallery.output.parent
    with build_lock(lock_folder, opts.wait):
        return _build(manifest, opts, executor, cache)


def _build(manifest: Manifest, opts: Options, executor: Executor | None, cache: Cache) -> Summary:
    """:func:`build`, under the build lock."""
    t_start = time.perf_counter()
    summary = Summary()
    stages = summary.stages
    with stages.stage("load"):
        ws = workspace(manifest)
    device = next(iter(ws.models.values())).device if ws.models else torch.device("cpu")
    executor = executor or executor_for(manifest, opts, ws)  # a missing Ray fails here, early
    out = manifest.gallery.output
    with counting([a.model for a in ws.models.values()], stages.count):
        with stages.stage("predict"):
            jobs, preds = plan(manifest, ws, cache, opts.force)
        with stages.stage("load"):
            todo = load_cached(jobs, cache)
        summary.plan, summary.jobs = plan_lines(jobs), jobs
        if opts.dry_run:
            summary.expected_passes = expected_passes(todo, ws)
            return summary
        with stages.stage("predict"):
            labels = {spec.id: label_maps(ws.models[spec.id], list(ws.images.values()), cache)
                      for spec in manifest.models}
        progress = Progress(len(todo) + reference_pass.pass_count(jobs) + scoring.task_count(jobs, manifest.metrics),
                            opts.quiet)
        try:
            executor.run(todo, cache, progress, summary.seconds)
            for family, family_jobs in families.partition(todo):
                ids = {j.tech.id for j in family_jobs}
                stages.add(family.name, sum(summary.seconds.get(i, 0.0) for i in ids))
            with stages.stage("references"):
                examples = reference_pass.compute_references(manifest, ws, jobs, cache, progress, opts.batch_size,
                                                         opts.force)
            with stages.stage("scoring"):
                rankings = scoring.score(jobs, ws, manifest.metrics, cache, opts.batch_size, progress, opts.share_passes)
        finally:
            progress.close()
        summary.faults = getattr(executor, "faults", None)
        summary.computed = sum(1 for j in todo if not j.error)
        summary.cached = sum(1 for j in jobs if j.cached)
        summary.failed = sum(1 for j in jobs if j.error)
        summary.failures = [f"{j.model.id} / {j.image.name} / {j.tech.id}: {j.error}" for j in jobs if j.error]
        counts = {"computed": summary.computed, "cached": summary.cached, "failed": summary.failed}

        def timings() -> dict[str, Any]:
            summary.total_seconds = time.perf_counter() - t_start
            faults = {"faults": summary.faults.to_json()} if summary.faults is not None else {}
            return {"summary": {**counts, **faults, "total_seconds": round(summary.total_seconds, 3)},
                    "seconds_per_technique": {k: round(v, 3) for k, v in sorted(summary.seconds.items())},
                    "stages": stages.to_json(), "failures": summary.failures}

        write_site(manifest, ws, jobs, preds, rankings, counts, timings, out, provenance(manifest, ws, device),
                   stages, labels, examples)
        if opts.use_cache and cache.root is not None and not summary.failed:
            _stamp(manifest, ws, cache, opts, out, summary)
    return summary


def provenance(manifest: Manifest, ws: Workspace, device: torch.device) -> dict[str, Any]:
    """What decides this build's output, for the build page: versions, device, seeds, each
    model's weights fingerprint, the manifest's hash and the date (``SOURCE_DATE_EPOCH`` when
    set, as reproducible builds expect; else today, UTC)."""
    import platform

    import torchvision

    from galleryvis import __version__

    text = (manifest.path.read_bytes() if manifest.path is not None
            else resources.files("galleryvis").joinpath("data/default.toml").read_bytes())
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch.isdigit()
            else datetime.datetime.now(datetime.timezone.utc))
    return {
        "galleryvis": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "device": str(device),
        "seeds": {t.id: t.params["seed"] for t in manifest.techniques if "seed" in t.params},
        "models": {a.id: {"name": a.name, "fingerprint": a.fingerprint, "size": a.size,
                          "mean": list(a.mean), "std": list(a.std)} for a in ws.models.values()},
        "manifest": {"name": manifest.label, "sha256": hashlib.sha256(text).hexdigest()},
        "date": when.date().isoformat(),
    }


def _stamp(manifest: Manifest, ws: Workspace, cache: Cache, opts: Options, out: Path, summary: Summary) -> None:
    """Record what this build read, so that an unchanged rebuild can skip everything (:mod:`.stamp`);
    none (and no earlier one) when a model's weights are not pinned (a factory without a weights
    file): only building it again tells whether they changed. A local cache only: a stamp lists
    its entries' files."""
    path = stamp.path_for(cache.root, manifest.path)
    if not all(adapter.pinned for adapter in ws.models.values()):
        path.unlink(missing_ok=True)
        return
    files = [img.ref.path for img in ws.images.values()] + list(manifest.concepts.reference or ())
    for spec in manifest.models:
        files += [Path(p).absolute() for p in ws.models[spec.id].files]
        files += [spec.labels] if spec.labels else []
    modules = [spec.factory.partition(":")[0] for spec in manifest.models if spec.factory]
    for plugin in manifest.gallery.plugins:
        if plugin.endswith(".py"):
            files.append(manifest.root / plugin)
        else:
            modules.append(plugin)
    files += [Path(f) for f in (getattr(sys.modules.get(m), "__file__", None) for m in modules) if f]
    entries = [p for key in sorted(cache.used) for p in cache.paths(key) if p.is_file()]
    line = f"0 computed, {summary.computed + summary.cached} cached, 0 failed"
    stamp.write(path, manifest=manifest.path,
                options=stamp.options(cache.root, opts.batch_size), files=files,
                dirs=[p.parent for p in files] + [manifest.root], entries=entries, output=out, summary=line)


def referenced_keys(manifest: Manifest, opts: Options) -> set[str]:
    """Every cache key the manifest uses (predictions, segmentations' label maps, maps, the
    concept atlases' reference examples, and its models' chunk sizes on this machine)."""
    ws = workspace(manifest)
    cache = Cache(cache_dir(manifest, opts), enabled=opts.use_cache)
    jobs, _ = plan(manifest, ws, cache, force=False)
    return {j.key for j in jobs} | reference_pass.reference_keys(manifest, ws, jobs, cache) \
        | {prediction_key(a, i.ref) for a in ws.models.values() for i in ws.images.values()} \
        | {label_map_key(a, i.ref) for a in ws.models.values() if a.task == "segmentation" for i in ws.images.values()} \
        | {chunking_key(a) for a in ws.models.values()}


def load_cached(jobs: list[Job], cache: Cache) -> list[Job]:
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
            for name in j.family.keeps:  # what the cache keeps beside the array (a synthesis cell's trace)
                if name in entry.meta:
                    setattr(j, name, entry.meta[name])
    return todo
