"""The compute stage: an :class:`Executor` turns planned jobs into results in the cache.

:class:`LocalExecutor` runs in this process: each technique family's jobs, family after family,
through the family's :meth:`~galleryvis.families.Family.compute` (attribution: cells chunked by
the sizes :func:`chunking_for` measures unless the build gives a ``batch_size``, failures
isolated, the chunk halved on out-of-memory; synthesis: cell by cell). Another executor (a
cluster) implements the same protocol on the same plain :class:`~galleryvis.jobs.Job`.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
import torch

from . import families
from .cache import Cache, cache_key
from .chunking import Chunking, machine
from .engine import measure_chunking
from .jobs import Job, Workspace, model_covers
from .models import ModelAdapter
from .progress import Progress


class Executor(Protocol):
    """Computes jobs: fills each job's ``result`` (or ``error``) and puts results in ``cache``;
    marks every job in ``progress`` once; adds seconds per technique id to ``seconds``."""

    def run(self, jobs: Sequence[Job], cache: Cache, progress: Progress, seconds: dict[str, float]) -> None: ...


def one_line(exc: BaseException) -> str:
    """``"Type: first line of the message"``, as a failed cell shows it."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


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
    machine does not measure."""
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


class LocalExecutor:
    """Runs jobs in this process on the workspace's models (see the module docstring);
    ``batch_size`` None: each model's measured :func:`chunking_for`."""

    def __init__(self, ws: Workspace, batch_size: int | None, fail_fast: bool = False, share: bool = True) -> None:
        self.ws, self.batch_size, self.fail_fast, self.share = ws, batch_size, fail_fast, share

    def run(self, jobs: Sequence[Job], cache: Cache, progress: Progress, seconds: dict[str, float]) -> None:
        for family, family_jobs in families.partition(jobs):
            family.compute(self, family_jobs, cache, progress, seconds)
