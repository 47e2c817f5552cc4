"""The compute stage: an :class:`Executor` turns planned jobs into results in the cache.

:class:`LocalExecutor` runs in this process: each technique family's jobs, family after family,
through the family's :meth:`~galleryvis.families.Family.compute` (attribution: cells chunked by
the sizes :func:`chunking_for` measures unless the build gives a ``batch_size``, failures
isolated, the chunk halved on out-of-memory; synthesis: cell by cell; concepts: chunks of images
of one row through ``concepts``). Another executor (a
cluster) implements the same protocol on the same plain :class:`~galleryvis.build.jobs.Job`.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from galleryvis import families, registry
from galleryvis.engine import Call, attribute_calls
from galleryvis.targets import Objective
from galleryvis.engine.changes import capture, prepared
from galleryvis.synthesis import synthesize
from galleryvis.attribution.concepts import concepts
from galleryvis.storage.cache import Cache, cache_key
from galleryvis.engine.chunking import Chunking, machine
from galleryvis.engine import default_batch_size, measure_chunking
from galleryvis.build.jobs import Job, Workspace, model_covers
from galleryvis.errors import one_line
from galleryvis.sources.loading import ModelAdapter
from galleryvis.build.progress import Progress


class Executor(Protocol):
    """Computes jobs: fills each job's ``result`` (or ``error``) and puts results in ``cache``;
    marks every job in ``progress`` once; adds seconds per technique id to ``seconds``."""

    def run(self, jobs: Sequence[Job], cache: Cache, progress: Progress, seconds: dict[str, float]) -> None: ...


def store(cache: Cache, job: Job) -> None:
    """Put a computed cell in the cache with what its key covers (technique and version,
    parameters, layer, target, image hash, weights, preprocessing) and the job fields its family
    keeps (a synthesis cell's trace and unit)."""
    meta: dict[str, Any] = {"image": job.image.name, "model": job.model.id, "covers": job.covers}
    meta.update({name: getattr(job, name) for name in job.family.keeps})
    cache.put(job.key, job.result, meta)


def chunking_key(adapter: ModelAdapter) -> str:
    """The cache key of the model's measured chunk sizes: the model, its input, and the machine
    (CPU or GPU name, torch's threads and version) they were measured on."""
    return cache_key(kind="chunking", **model_covers(adapter), machine=machine(adapter.device), torch=torch.__version__)


def chunking_for(adapter: ModelAdapter, cache: Cache) -> Chunking:
    """The model's chunk sizes on this machine: measured once (:func:`~galleryvis.engine.measure_chunking`),
    kept on the loaded model, and cached (:func:`chunking_key`), so a later build on the same
    machine does not measure; a detector's (its output is boxes) the engine's default batch size."""
    if adapter.chunking is None and adapter.task == "detection":  # boxes, not logits: not timed
        adapter.chunking = Chunking.of(default_batch_size(adapter.device))
    if adapter.chunking is None:
        key = chunking_key(adapter)
        entry = cache.get(key)
        if entry is None:
            sample = torch.randn(1, 3, adapter.size, adapter.size, generator=torch.Generator().manual_seed(0))
            chunks = measure_chunking(adapter.model, sample.to(adapter.device))
            cache.put(key, np.array([chunks.backward, chunks.forward], dtype=np.int64),
                      {"model": adapter.id, "machine": machine(adapter.device)})
        else:
            chunks = Chunking(*(int(v) for v in entry.array))
        adapter.chunking = chunks
    return adapter.chunking


class FamilyCompute(Protocol):
    """How the cells of a technique family (:mod:`galleryvis.families`) are computed."""

    def tasks(self, jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
        """The family's jobs as a cluster's tasks (each task computed on one worker)."""
        ...

    def compute(self, executor: LocalExecutor, jobs: Sequence[Job], cache: Cache, progress: Progress,
                seconds: dict[str, float]) -> None:
        """Fill each job's result (or error) on the executor's workspace, store results in
        ``cache``, mark each job in ``progress`` once and add seconds per technique id."""
        ...


def _cell_groups(jobs: Sequence[Job]) -> list[list[list[Job]]]:
    """Jobs by model and technique set: lists of cells, a cell being the jobs of one image."""
    by_cell: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in jobs:
        by_cell[(job.model.id, job.image.id)].append(job)
    groups: dict[tuple[str, tuple[str, ...]], list[list[Job]]] = defaultdict(list)
    for (model_id, _), cell in by_cell.items():
        groups[(model_id, tuple(j.tech.id for j in cell))].append(cell)
    return list(groups.values())


class AttributionCompute:
    """Attribution maps: cells of one model and technique set computed in chunks of images,
    every technique of a chunk in one ``attribute_calls`` call (sharing their passes); one
    failing technique or image isolated from the others, the chunk halved on out-of-memory."""

    def tasks(self, jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
        """Chunks of ``batch_size`` images of one model and technique set, every technique of a
        cell in the same task."""
        return [[j for cell in cells[i:i + batch_size] for j in cell]
                for cells in _cell_groups(jobs) for i in range(0, len(cells), batch_size)]

    def compute(self, executor: LocalExecutor, jobs: Sequence[Job], cache: Cache, progress: Progress,
                seconds: dict[str, float]) -> None:
        """Chunks of each model's measured sizes (or the executor's ``batch_size``)."""
        for cells in _cell_groups(jobs):
            adapter = executor.ws.adapter(cells[0][0])
            chunks = Chunking.of(executor.batch_size) if executor.batch_size else chunking_for(adapter, cache)
            for start in range(0, len(cells), chunks.backward):
                chunk = cells[start:start + chunks.backward]
                _chunk(executor, chunk, chunks, seconds, progress)
                for job in (j for cell_jobs in chunk for j in cell_jobs):
                    if job.result is not None:
                        store(cache, job)
                progress.mark([j for c in chunk for j in c], f"{chunk[0][0].model.id}: {len(chunk)} image(s)")


def _chunk(executor: LocalExecutor, chunk: list[list[Job]], chunks: Chunking, seconds: dict[str, float],
           progress: Progress) -> None:
    """One attribute_calls call for every technique of the chunk (variants of one technique
    included, so they share their passes; one call per technique when the executor's ``share``
    is off); on failure, retry each technique and image alone (so one failing technique does not
    take the others down), halving the batch on OOM."""
    adapter = executor.ws.adapter(chunk[0][0])
    x = executor.ws.inputs([cell[0] for cell in chunk])
    targets = [executor.ws.objective(cell[0]) for cell in chunk]
    columns = list(zip(*chunk))  # one tuple of jobs (one per image) per technique
    for group in [columns] if executor.share else [[col] for col in columns]:
        try:
            _attribute(adapter, x, targets, group, chunks, seconds, progress)
        except Exception:  # noqa: BLE001  (isolate: retry one technique and one image at a time)
            if executor.fail_fast:
                raise
            for col in group:
                for i, job in enumerate(col):
                    try:
                        _attribute(adapter, x[i:i + 1], targets[i:i + 1], [(job,)], chunks, seconds, progress)
                    except Exception as exc:  # noqa: BLE001
                        job.error = one_line(exc)


def _attribute(adapter: ModelAdapter, x: torch.Tensor, targets: list[Objective], cols: list[tuple[Job, ...]],
               chunks: Chunking, seconds: dict[str, float], progress: Progress) -> None:
    col_of = {c[0].tech.id: c for c in cols}
    calls = {c[0].tech.id: Call(c[0].tech.name, c[0].layer, c[0].params) for c in cols}
    while True:
        spent: dict[str, float] = defaultdict(float)  # per technique; a shared pass goes to its first user
        clock = [time.perf_counter()]

        def done(key: str, _n: int) -> None:
            now = time.perf_counter()
            spent[key] += now - clock[0]
            clock[0] = now
            progress.mark(col_of[key], f"{adapter.id}: {key}")

        try:
            maps = attribute_calls(adapter.model, x, calls, targets, batch_size=chunks, progress=done,
                                   within=lambda key, i, n: progress.within(f"{adapter.id}: {key}", i, n),
                                   mean=adapter.mean, std=adapter.std)
            break
        except torch.OutOfMemoryError:
            if chunks == chunks.halved():
                raise
            chunks = chunks.halved()
    for key, col in col_of.items():
        seconds[key] = seconds.get(key, 0.0) + spent[key]
        arr = maps[key].numpy()
        if not np.isfinite(arr).all():
            raise FloatingPointError(f"{col[0].tech.name} produced NaN or Inf values")
        for i, job in enumerate(col):
            job.result = arr[i]
            job.seconds["compute"] = spent[key] / len(col)


class SynthesisCompute:
    """Synthesis: each cell alone through ``synthesize``, for the image's own class (a
    ``target`` unit) or the channel most active on the image (a ``channel`` unit)."""

    def tasks(self, jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
        """One task per cell."""
        return [[j] for j in jobs]

    def compute(self, executor: LocalExecutor, jobs: Sequence[Job], cache: Cache, progress: Progress,
                seconds: dict[str, float]) -> None:
        """One cell after the other; a failing cell records its error (unless ``fail_fast``)."""
        for job in jobs:
            t0 = time.perf_counter()
            try:
                _synthesize(executor.ws, job, progress)
            except Exception as exc:  # noqa: BLE001  (recorded in the cell; the build goes on)
                if executor.fail_fast:
                    raise
                job.error = one_line(exc)
            else:
                store(cache, job)
            job.seconds["compute"] = time.perf_counter() - t0
            seconds[job.tech.id] = seconds.get(job.tech.id, 0.0) + job.seconds["compute"]
            progress.mark([job], f"{job.model.id}: {job.tech.id}" + (f" for {job.image.name}" if job.per_image else ""))


def _synthesize(ws: Workspace, job: Job, progress: Progress) -> None:
    """One synthesis cell: the image's own class (target) or its most active channel (unit), as
    the technique's :class:`Inputs` say."""
    inputs = registry.get(job.tech.name).inputs
    adapter = ws.adapter(job)
    x = ws.image(job).input_for(adapter)[None].to(adapter.device)
    kwargs: dict[str, Any] = {"mean": adapter.mean, "std": adapter.std}
    if job.layer is not None:
        kwargs["layer"] = job.layer
    if inputs.image == "required":
        kwargs["image"] = x
    if inputs.unit == "target":  # a free text's logit column is this model's own (texts were added in any order)
        kwargs["target"] = job.target if job.text is None else ws.objective(job).index  # type: ignore[attr-defined]
    elif inputs.unit == "channel":
        job.unit = kwargs["channel"] = _top_channel(adapter, x, job.layer)
    what = f"{job.model.id}: {job.tech.id}"
    result = synthesize(adapter.model, job.tech.name, **kwargs, **job.params,
                        within=lambda done, total: progress.within(what, done, total))
    out = result.image[0].numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError(f"{job.tech.name} produced NaN or Inf values")
    job.result = out
    job.trace = [round(float(v), 5) for v in result.trace[:, 0]]


def _top_channel(adapter: ModelAdapter, x: torch.Tensor, layer: str) -> int:
    """The channel of ``layer`` with the highest mean activation on ``x`` (one image)."""
    with prepared(adapter.model), torch.no_grad(), capture(adapter.model, [layer]) as acts:
        adapter.model(x)
    a = acts[layer]
    return int(a.flatten(2).mean(2)[0].argmax()) if a.dim() == 4 else int(a[0].argmax())


def _rows(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs by model and row (technique id), in order."""
    by_row: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in jobs:
        by_row[(job.model.id, job.tech.id)].append(job)
    return list(by_row.values())


class ConceptsCompute:
    """Concepts: the cells of one model and row in chunks of images, each chunk in one
    :func:`~galleryvis.attribution.concepts.concepts` call with the row's parameters; a failing
    chunk retried one image at a time, so one failing image does not take the others down."""

    def tasks(self, jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
        """Chunks of ``batch_size`` images of one model and row."""
        return [row[i:i + batch_size] for row in _rows(jobs) for i in range(0, len(row), batch_size)]

    def compute(self, executor: LocalExecutor, jobs: Sequence[Job], cache: Cache, progress: Progress,
                seconds: dict[str, float]) -> None:
        """Chunks of each model's measured sizes (or the executor's ``batch_size``)."""
        for row in _rows(jobs):
            adapter = executor.ws.adapter(row[0])
            chunks = Chunking.of(executor.batch_size) if executor.batch_size else chunking_for(adapter, cache)
            for start in range(0, len(row), chunks.backward):
                chunk = row[start:start + chunks.backward]
                t0 = time.perf_counter()
                try:
                    _concept_cells(executor.ws, chunk, chunks)
                except Exception:  # noqa: BLE001  (isolate: retry one image at a time)
                    if executor.fail_fast:
                        raise
                    for job in chunk:
                        try:
                            _concept_cells(executor.ws, [job], chunks)
                        except Exception as exc:  # noqa: BLE001
                            job.error = one_line(exc)
                spent = time.perf_counter() - t0
                for job in chunk:
                    job.seconds["compute"] = spent / len(chunk)
                    if job.result is not None and not job.error:
                        store(cache, job)
                seconds[row[0].tech.id] = seconds.get(row[0].tech.id, 0.0) + spent
                progress.mark(chunk, f"{row[0].model.id}: {row[0].tech.id}, {len(chunk)} image(s)")


def _concept_cells(ws: Workspace, jobs: list[Job], chunks: Chunking) -> None:
    """The concept cells of one model and row for ``jobs``' images: each job's maps (k, H, W) and
    its ``concepts`` (layer, channels, shares, drops, the median drop of random channels)."""
    adapter = ws.adapter(jobs[0])
    params = dict(jobs[0].params)
    found = concepts(adapter.model, ws.inputs(jobs), [ws.objective(j) for j in jobs], jobs[0].layer,
                     batch_size=chunks, mean=adapter.mean, std=adapter.std, **params)
    maps = found.maps.numpy()
    if not np.isfinite(maps).all():
        raise FloatingPointError(f"{jobs[0].tech.name} produced NaN or Inf values")
    assert found.drops is not None and found.random_drops is not None
    for i, job in enumerate(jobs):
        job.result = maps[i]
        job.concepts = {"layer": found.layer, "channels": found.channels[i].tolist(),
                        "shares": found.shares[i].tolist(), "drops": found.drops[i].tolist(),
                        "random_drop": float(found.random_drops[i]), "random_channels": found.random_channels}


#: How each family's cells are computed, by the family's name.
COMPUTE: Mapping[str, FamilyCompute] = {families.Attribution.name: AttributionCompute(),
                                        families.Synthesis.name: SynthesisCompute(),
                                        families.ConceptFamily.name: ConceptsCompute()}


def compute_of(family: families.Family) -> FamilyCompute:
    """How ``family``'s cells are computed."""
    return COMPUTE[family.name]


class LocalExecutor:
    """Runs jobs in this process on the workspace's models (see the module docstring);
    ``batch_size`` None: each model's measured :func:`chunking_for`."""

    def __init__(self, ws: Workspace, batch_size: int | None, fail_fast: bool = False, share: bool = True) -> None:
        self.ws, self.batch_size, self.fail_fast, self.share = ws, batch_size, fail_fast, share

    def run(self, jobs: Sequence[Job], cache: Cache, progress: Progress, seconds: dict[str, float]) -> None:
        for family, family_jobs in families.partition(jobs):
            compute_of(family).compute(self, family_jobs, cache, progress, seconds)
