"""A build's compute stage on a Ray cluster: :class:`RayExecutor`, the same
:class:`~galleryvis.build.executor.Executor` protocol as the local one, on the same plain jobs.

The driver groups attribution cells by model and technique set into chunks of images (as the
local executor does); each chunk, and each synthesis cell, is one task. Every model gets
``workers`` actors (:class:`_ModelWorker`), each of which loads the model once, from the job's
model spec (a weights file's bytes shipped through Ray's object store), on its node, and runs its tasks through a :class:`~galleryvis.build.executor.LocalExecutor`
(so a failing technique or image is isolated, and the batch halved on out-of-memory, exactly
as locally), storing results in the shared cache. A worker that dies is replaced by a new one
and the tasks it had not finished are sent again (:data:`RETRIES` times at most; counted in
:attr:`RayExecutor.faults`). The driver counts finished tasks on one progress bar and renders.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from galleryvis import families
from galleryvis.storage.cache import Cache
from galleryvis.engine import default_batch_size
from galleryvis.errors import ExecutorError
from galleryvis.build.executor import LocalExecutor, compute_of
from galleryvis.build.faults import Faults, checkpoint
from galleryvis.errors import one_line
from galleryvis.build.jobs import Job, LoadedImage, Workspace
from galleryvis.config.manifest import ModelSpec
from galleryvis.build.progress import Progress

#: How often a task is sent again after its worker died under it (each time to a new worker).
RETRIES = 3


_MISSING = 'the ray executor needs Ray: pip install "galleryvis[ray]"'


def _ray() -> Any:
    """The ``ray`` module, or an ExecutorError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(_MISSING) from None
    return ray


@dataclass(frozen=True)
class Outcome:
    """What a task sends back for one job (its map is in the cache too)."""

    result: Any
    error: str
    kept: dict[str, Any]  # the job fields its family keeps (a synthesis cell's trace and unit)


@dataclass(frozen=True)
class LocalCluster:
    """A Ray cluster started on this machine: its ``address``, and the ``env`` (its own token)
    that a driver needs, set before the driver imports ray."""

    address: str
    env: dict[str, str]


@contextmanager
def local_cluster(folder: Path, nodes: int = 2, cpus: int = 1, timeout: float = 120.0) -> Iterator[LocalCluster]:
    """``ray start --head`` plus ``nodes - 1`` × ``ray start --address=...`` on this machine, each
    node with ``cpus`` CPUs and no GPU, for tests and measurements; every node is stopped after
    (its process group ended by id), even on error. ``folder`` holds Ray's files (keep it short:
    Ray's sockets live under it)."""
    import importlib.util
    import secrets
    import signal
    import socket
    import subprocess
    import sys

    if importlib.util.find_spec("ray") is None:  # not imported here: a driver sets the token first
        raise ExecutorError(_MISSING)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    env = {**os.environ, **token}
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    common = [f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats"]
    groups: list[int] = []
    try:
        for n in range(nodes):
            role = ["--head", f"--port={port}", f"--temp-dir={folder}", "--include-dashboard=false"] if n == 0 \
                else [f"--address={address}"]
            proc = subprocess.Popen([ray_cli, "start", *role, *common], env=env, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            groups.append(proc.pid)
            _, err = proc.communicate(timeout=timeout)  # returns once the node has joined
            if proc.returncode:
                raise ExecutorError(f"ray start failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
        yield LocalCluster(address, token)
    finally:
        for group in reversed(groups):
            _end_group(group, signal.SIGTERM, 5.0) or _end_group(group, signal.SIGKILL, 5.0)


def _end_group(group: int, sig: int, wait: float) -> bool:
    """Send ``sig`` to process group ``group``; whether it is gone within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    try:
        os.killpg(group, sig)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


class _ModelWorker:
    """A Ray actor: one model, loaded once on its node, computing tasks of that model's jobs."""

    def __init__(self, spec: ModelSpec, root: Path, plugins: tuple[str, ...], device: str,
                 batch_size: int | None, fail_fast: bool, weights: bytes | None = None, share: bool = True,
                 threads: int | None = None) -> None:
        """``weights``: the bytes of the spec's weights file, shipped by the driver (the file is
        written to a temporary folder on this node, loaded and removed); None: none to ship.
        ``batch_size`` None: the chunk sizes measured on this node (``executor.chunking_for``).
        ``threads``: torch's intra-op threads, the driver's (None: Ray's, ``num_cpus``), since a
        CPU's sums round by how they are split among threads (see docs/scale-out.md)."""
        import dataclasses
        import tempfile

        from galleryvis.config import plugins as plugin_modules
        from galleryvis.sources.loading import choose_device, load_model

        if threads is not None:
            torch.set_num_threads(threads)
        plugin_modules.load_entry_points()
        for name in plugins:
            plugin_modules.load(name, root)
        with tempfile.TemporaryDirectory(prefix="galleryvis-weights-") as folder:
            if weights is not None:
                local = Path(folder) / Path(str(spec.weights)).name
                local.write_bytes(weights)
                spec = dataclasses.replace(spec, weights=str(local))
            checkpoint("load", [spec.id])
            self.adapter = load_model(spec, root, choose_device(device), spec.field)
        self.batch_size, self.fail_fast, self.share = batch_size, fail_fast, share
        self.images: dict[str, LoadedImage] = {}
        self.node = _ray().util.get_node_ip_address()

    def compute(self, jobs: list[Job], cache: Cache) -> tuple[list[Outcome], dict[str, float], str]:
        """Run ``jobs`` (one chunk); their outcomes, seconds per technique id, and this node."""
        from galleryvis.storage.images import file_sha256, load_image

        names = [self.adapter.id, *(job.image.id for job in jobs)]
        checkpoint("start", names)
        for job in jobs:
            if job.covers["fingerprint"] != self.adapter.fingerprint:
                raise ExecutorError(f"{job.model.id}: the weights on node {self.node} differ from the driver's")
            ref = job.image
            if ref.id not in self.images:
                if file_sha256(ref.path) != ref.sha:
                    raise ExecutorError(f"{ref.path} on node {self.node} differs from the driver's copy")
                self.images[ref.id] = LoadedImage(ref, load_image(ref.path))
        self.adapter.score_texts([job.text for job in jobs if job.text is not None])
        ws = Workspace({self.adapter.id: self.adapter}, self.images)
        seconds: dict[str, float] = {}
        LocalExecutor(ws, self.batch_size, self.fail_fast, self.share).run(jobs, cache, Progress(0, True), seconds)
        checkpoint("end", names)
        return [Outcome(j.result, j.error, {name: getattr(j, name) for name in j.family.keeps}) for j in jobs], \
            seconds, self.node


def _weights_file(spec: ModelSpec) -> Path | None:
    """The model's weights file (the driver ships its bytes through Ray's object store), or None
    for named, random or factory-made weights."""
    from galleryvis.sources.weights import is_path

    return Path(spec.weights) if spec.weights and is_path(spec.weights) and Path(spec.weights).is_file() else None


def units(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """The tasks of a build, family after family (:meth:`~galleryvis.families.Family.tasks`):
    attribution cells of one model and technique set in chunks of ``batch_size`` images (every
    technique of a cell in the same task), then each synthesis cell."""
    return [task for family, family_jobs in families.partition(jobs) for task in compute_of(family).tasks(family_jobs, batch_size)]


class RayExecutor:
    """Runs jobs on a Ray cluster (see the module docstring).

    ``address``: the cluster (``ray://host:10001`` or ``host:6379``); None: ``RAY_ADDRESS``,
    else a local Ray instance started for this build. ``num_gpus``: GPUs per worker (None: 1
    where the jobs were planned for CUDA, else 0); ``num_cpus``: CPUs per worker (what Ray
    reserves; a worker computes with the driver's torch threads, so that its maps equal a local
    build's); ``workers``: actors per model. ``faults``: what the last :meth:`run` survived.
    """

    def __init__(self, root: Path, plugins: tuple[str, ...], batch_size: int | None, *, address: str | None = None,
                 num_gpus: float | None = None, num_cpus: int = 1, workers: int = 1, fail_fast: bool = False,
                 share: bool = True) -> None:
        _ray()
        self.root, self.plugins, self.batch_size = root, plugins, batch_size
        self.address, self.num_gpus, self.num_cpus = address, num_gpus, num_cpus
        self.workers, self.fail_fast, self.share = workers, fail_fast, share
        self.faults = Faults()

    def run(self, jobs: Sequence[Job], cache: Cache, progress: Progress, seconds: dict[str, float]) -> None:
        self.faults = Faults()
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
        # Ray neither restarts a worker nor retries its tasks: this loop does both (see _retryable)
        actor = ray.remote(num_cpus=self.num_cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0)(_ModelWorker)
        starts: dict[str, Callable[[], Any]] = {}  # model id -> starts one more of its workers
        pools: dict[str, list[Any]] = {}
        for job in jobs:
            if job.model.id not in pools:
                weights = _weights_file(job.model)
                shipped = ray.put(weights.read_bytes()) if weights is not None else None  # once per build
                starts[job.model.id] = partial(actor.remote, job.model, self.root, self.plugins, device,
                                               self.batch_size, self.fail_fast, shipped, self.share,
                                               torch.get_num_threads())
                pools[job.model.id] = [starts[job.model.id]() for _ in range(self.workers)]
        cache_ref = ray.put(cache)
        pending: dict[Any, tuple[list[Job], int, int, Any]] = {}  # task -> (its jobs, worker slot, retries, worker)

        def submit(unit: list[Job], slot: int, retries: int) -> None:
            worker = pools[unit[0].model.id][slot]
            pending[worker.compute.remote(unit, cache_ref)] = (unit, slot, retries, worker)

        left = {model_id: 0 for model_id in pools}  # tasks per model not yet finished
        for n, unit in enumerate(units(jobs, self.batch_size or default_batch_size(torch.device(device)))):
            submit(unit, n % self.workers, 0)
            left[unit[0].model.id] += 1
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            unit, slot, retries, worker = pending.pop(done)
            pool = pools[unit[0].model.id]
            try:
                outcomes, spent, node = ray.get(done)
            except ray.exceptions.RayError as exc:
                if _retryable(ray, exc) and retries < RETRIES:
                    if pool[slot] is worker:  # the first of its tasks to report its death: start another
                        ray.kill(worker)  # (it may be alive but unreachable)
                        pool[slot] = starts[unit[0].model.id]()
                        self.faults.restarted += 1
                    self.faults.retried += 1
                    submit(unit, slot, retries + 1)
                    continue
                if self.fail_fast:
                    raise
                why = one_line(exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc)
                for job in unit:
                    job.error = f"{why} (retried {retries} times)" if retries else why
                node = "?"
            else:
                for job, outcome in zip(unit, outcomes):
                    job.result = outcome.result
                    for name, value in outcome.kept.items():
                        setattr(job, name, value)
                    job.error = f"{outcome.error} (on node {node})" if outcome.error else ""
                    if job.result is not None:
                        cache.used.add(job.key)
                for tech_id, s in spent.items():
                    seconds[tech_id] = seconds.get(tech_id, 0.0) + s
            left[unit[0].model.id] -= 1
            if not left[unit[0].model.id]:  # free its workers' CPUs and GPUs for the next model's
                for live in pool:
                    ray.kill(live)
            progress.mark(unit, f"{unit[0].model.id}: {len({j.image.id for j in unit})} image(s) on {node}")


def _retryable(ray: Any, exc: BaseException) -> bool:
    """Whether a task failed because its worker died or became unreachable (killed, out of
    memory, its node lost: the task is sent again, to a new worker), not because of its own code
    or its worker's failing ``__init__`` (which a new worker would only repeat).

    The executor does this itself rather than through Ray's ``max_restarts`` /
    ``max_task_retries``: with those, a worker that Ray gave up on (its restarts spent, or a
    restart that failed) fails every task queued on it with ``ActorDiedError``, where a new worker
    can still take them; and Ray's retries are invisible to the driver, which counts them here."""
    errors = ray.exceptions
    if isinstance(exc, errors.RayActorError):
        return not exc.actor_init_failed
    return isinstance(exc, (errors.WorkerCrashedError, errors.ObjectLostError, errors.LocalRayletDiedError))
