"""A build's compute stage on a Ray cluster: :class:`RayExecutor`, the same
:class:`~galleryvis.executor.Executor` protocol as the local one, on the same plain jobs.

The driver groups attribution cells by model and technique set into chunks of images (as the
local executor does); each chunk, and each synthesis cell, is one task. Every model gets
``workers`` actors (:class:`_ModelWorker`), each of which loads the model once, from the job's
model spec, on its node, and runs its tasks through a :class:`~galleryvis.executor.LocalExecutor`
(so a failing technique or image is isolated, and the batch halved on out-of-memory, exactly
as locally), storing results in the shared cache. A killed worker is restarted and its
task retried. The driver counts finished tasks on one progress bar and renders.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .cache import Cache
from .errors import ExecutorError
from .executor import LocalExecutor, one_line
from .jobs import Job, LoadedImage, Workspace
from .manifest import ModelSpec
from .progress import Progress

#: How often Ray restarts a killed worker, and retries the task it was running.
RETRIES = 3


def _ray() -> Any:
    """The ``ray`` module, or an ExecutorError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError('the ray executor needs Ray: pip install "galleryvis[ray]"') from None
    return ray


@dataclass(frozen=True)
class Outcome:
    """What a task sends back for one job (its map is in the cache too)."""

    result: Any
    error: str
    trace: list[float]
    unit: int | None


class _ModelWorker:
    """A Ray actor: one model, loaded once on its node, computing tasks of that model's jobs."""

    def __init__(self, spec: ModelSpec, root: Path, plugins: tuple[str, ...], device: str,
                 batch_size: int, fail_fast: bool) -> None:
        from . import plugins as plugin_modules
        from .models import choose_device, load_model

        plugin_modules.load_entry_points()
        for name in plugins:
            plugin_modules.load(name, root)
        self.adapter = load_model(spec, root, choose_device(device), spec.field)
        self.batch_size, self.fail_fast = batch_size, fail_fast
        self.images: dict[str, LoadedImage] = {}
        self.node = _ray().util.get_node_ip_address()

    def compute(self, jobs: list[Job], cache: Cache) -> tuple[list[Outcome], dict[str, float], str]:
        """Run ``jobs`` (one chunk); their outcomes, seconds per technique id, and this node."""
        from .images import file_sha256, load_image

        for job in jobs:
            if job.covers["fingerprint"] != self.adapter.fingerprint:
                raise ExecutorError(f"{job.model.id}: the weights on node {self.node} differ from the driver's")
            ref = job.image
            if ref.id not in self.images:
                if file_sha256(ref.path) != ref.sha:
                    raise ExecutorError(f"{ref.path} on node {self.node} differs from the driver's copy")
                self.images[ref.id] = LoadedImage(ref, load_image(ref.path))
        ws = Workspace({self.adapter.id: self.adapter}, self.images)
        seconds: dict[str, float] = {}
        LocalExecutor(ws, self.batch_size, self.fail_fast).run(jobs, cache, Progress(0, True), seconds)
        return [Outcome(j.result, j.error, j.trace, j.unit) for j in jobs], seconds, self.node


def units(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """The tasks of a build: attribution cells of one model and technique set in chunks of
    ``batch_size`` images (every technique of a cell in the same task), then each synthesis cell."""
    by_cell: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        if job.family == "attribution":
            by_cell.setdefault((job.model.id, job.image.id), []).append(job)
    groups: dict[tuple[str, tuple[str, ...]], list[list[Job]]] = {}
    for (model_id, _), cell in by_cell.items():
        groups.setdefault((model_id, tuple(j.tech.id for j in cell)), []).append(cell)
    out = [[j for cell in cells[i:i + batch_size] for j in cell]
           for cells in groups.values() for i in range(0, len(cells), batch_size)]
    return out + [[j] for j in jobs if j.family == "synthesis"]


class RayExecutor:
    """Runs jobs on a Ray cluster (see the module docstring).

    ``address``: the cluster (``ray://host:10001`` or ``host:6379``); None: ``RAY_ADDRESS``,
    else a local Ray instance started for this build. ``num_gpus``: GPUs per worker (None: 1
    where the jobs were planned for CUDA, else 0); ``workers``: actors per model.
    """

    def __init__(self, root: Path, plugins: tuple[str, ...], batch_size: int, *, address: str | None = None,
                 num_gpus: float | None = None, workers: int = 1, fail_fast: bool = False) -> None:
        _ray()
        self.root, self.plugins, self.batch_size = root, plugins, batch_size
        self.address, self.num_gpus, self.workers, self.fail_fast = address, num_gpus, workers, fail_fast

    def run(self, jobs: Sequence[Job], cache: Cache, progress: Progress, seconds: dict[str, float]) -> None:
        if not jobs:
            return
        ray = _ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address or os.environ.get("RAY_ADDRESS") or None,
                     logging_level="ERROR", log_to_driver=False)
        try:
            self._run(ray, jobs, cache, progress, seconds)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, jobs: Sequence[Job], cache: Cache, progress: Progress, seconds: dict[str, float]) -> None:
        device = jobs[0].covers["device"]
        gpus = self.num_gpus if self.num_gpus is not None else (1.0 if device == "cuda" else 0.0)
        actor = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=RETRIES, max_task_retries=RETRIES)(_ModelWorker)
        pools: dict[str, list[Any]] = {}
        for job in jobs:
            if job.model.id not in pools:
                pools[job.model.id] = [actor.remote(job.model, self.root, self.plugins, device, self.batch_size,
                                                    self.fail_fast) for _ in range(self.workers)]
        cache_ref = ray.put(cache)
        pending: dict[Any, list[Job]] = {}
        left = {model_id: 0 for model_id in pools}  # tasks per model not yet finished
        for n, unit in enumerate(units(jobs, self.batch_size)):
            pool = pools[unit[0].model.id]
            pending[pool[n % len(pool)].compute.remote(unit, cache_ref)] = unit
            left[unit[0].model.id] += 1
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(done)
            left[unit[0].model.id] -= 1
            if not left[unit[0].model.id]:  # free its workers' CPUs and GPUs for the next model's
                for worker in pools[unit[0].model.id]:
                    ray.kill(worker)
            try:
                outcomes, spent, node = ray.get(done)
            except ray.exceptions.RayError as exc:
                if self.fail_fast:
                    raise
                for job in unit:
                    job.error = one_line(exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc)
                node = "?"
            else:
                for job, outcome in zip(unit, outcomes):
                    job.result, job.trace, job.unit = outcome.result, outcome.trace, outcome.unit
                    job.error = f"{outcome.error} (on node {node})" if outcome.error else ""
                    if job.result is not None:
                        cache.used.add(job.key)
                for tech_id, s in spent.items():
                    seconds[tech_id] = seconds.get(tech_id, 0.0) + s
            progress.mark(unit, f"{unit[0].model.id}: {len({j.image.id for j in unit})} image(s) on {node}")
