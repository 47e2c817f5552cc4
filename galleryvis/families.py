"""Technique families: the one contract every family of techniques implements.

A technique's registry entry names its family (``attribution``: maps of where the evidence for
a class lies; ``synthesis``: images optimized or reconstructed through the model). The family
says what a cell of its techniques needs from the plan (:class:`Inputs`, the default of its
techniques), how its cells are computed (:meth:`Family.compute`, which calls the engine), what
the cache stores for them, how the gallery shows them and whether they are scored. Every other
module asks the family (``FAMILIES[tech.family]``, ``job.family``) and none compares a family's
name (``tests/test_layout.py`` checks it). Imports no torch: the compute methods import the
compute modules when they run, so the site layer reads the families too.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    import torch

    from .cache import Cache
    from .chunking import Chunking
    from .executor import LocalExecutor
    from .jobs import Job, Workspace
    from .models import ModelAdapter
    from .progress import Progress

#: What a technique explains or optimizes: a ``target`` class or a ``channel`` of its layer.
UnitKind = Literal["channel", "target"]
#: Whether a technique needs, accepts or refuses an input image.
ImageUse = Literal["required", "optional", "none"]


@dataclass(frozen=True)
class Inputs:
    """What a cell of a technique needs from the plan besides its layer (the registry's
    ``layer``): its ``unit`` (``unit_required``: a caller must give one), whether it needs,
    accepts or refuses the input ``image``, and whether a gallery makes it at the model's input
    size (``model_size``: its ``size`` parameter, unless the manifest sets one)."""

    unit: UnitKind | None = "target"
    unit_required: bool = False
    image: ImageUse = "required"
    model_size: bool = False


class Family(Protocol):
    """A family of techniques. ``name``: the registry's ``family``. ``title``: the gallery
    table of its techniques. ``kind``: the display kind of its techniques that declare none and
    are no CAM (their picture variants follow from it). ``inputs``: what its cells need from the
    plan, unless a technique declares its own. ``api``: the public function that computes it
    (``galleryvis.<api>``). ``stores``: the cache entry's ``covers`` kind; ``keeps``: the job
    fields a cached cell keeps beside its array. ``scored``: its maps get the faithfulness
    scores and the ranking; ``transfer_ranked``: its class images are ranked by the gallery's
    other models. ``split_by_kind``: the gallery draws one table per display kind (with a
    title in the grid's titles) instead of one for the family; ``headline``: the landing page
    shows its techniques."""

    name: str
    title: str
    kind: str
    inputs: Inputs
    api: str
    stores: str
    keeps: tuple[str, ...]
    scored: bool
    transfer_ranked: bool
    split_by_kind: bool
    headline: bool

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


class Attribution:
    """Maps of where a model's evidence for a class lies: cells of one model and technique set
    computed in chunks of images, every technique of a chunk in one ``attribute_calls`` call
    (sharing their passes); one failing technique or image isolated from the others, the chunk
    halved on out-of-memory."""

    name = "attribution"
    title = "Attribution maps"
    kind = "gradient"
    inputs = Inputs()
    api = "attribute"
    stores = "map"
    keeps: tuple[str, ...] = ()
    scored = True
    transfer_ranked = False
    split_by_kind = True
    headline = True

    def tasks(self, jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
        """Chunks of ``batch_size`` images of one model and technique set, every technique of a
        cell in the same task."""
        return [[j for cell in cells[i:i + batch_size] for j in cell]
                for cells in _cell_groups(jobs) for i in range(0, len(cells), batch_size)]

    def compute(self, executor: LocalExecutor, jobs: Sequence[Job], cache: Cache, progress: Progress,
                seconds: dict[str, float]) -> None:
        """Chunks of each model's measured sizes (or the executor's ``batch_size``)."""
        from .chunking import Chunking
        from .executor import chunking_for, store

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
    from .executor import one_line

    adapter = executor.ws.adapter(chunk[0][0])
    x = executor.ws.inputs([cell[0] for cell in chunk])
    targets = [cell[0].target for cell in chunk]
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


def _attribute(adapter: ModelAdapter, x: torch.Tensor, targets: list[int], cols: list[tuple[Job, ...]],
               chunks: Chunking, seconds: dict[str, float], progress: Progress) -> None:
    import numpy as np
    import torch

    from .engine import Call, attribute_calls

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


class Synthesis:
    """Images optimized or reconstructed through a model (feature visualization): each cell
    alone through ``synthesize``, for the image's own class (a ``target`` unit) or the channel
    most active on the image (a ``channel`` unit)."""

    name = "synthesis"
    title = "Feature visualization"
    kind = "image"
    inputs = Inputs(unit=None, image="none")
    api = "synthesize"
    stores = "synthesis"
    keeps = ("trace", "unit")
    scored = False
    transfer_ranked = True
    split_by_kind = False
    headline = False

    def tasks(self, jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
        """One task per cell."""
        return [[j] for j in jobs]

    def compute(self, executor: LocalExecutor, jobs: Sequence[Job], cache: Cache, progress: Progress,
                seconds: dict[str, float]) -> None:
        """One cell after the other; a failing cell records its error (unless ``fail_fast``)."""
        from .executor import one_line, store

        for job in jobs:
            t0 = time.perf_counter()
            try:
                _synthesize(executor.ws, job)
            except Exception as exc:  # noqa: BLE001  (recorded in the cell; the build goes on)
                if executor.fail_fast:
                    raise
                job.error = one_line(exc)
            else:
                store(cache, job)
            job.seconds["compute"] = time.perf_counter() - t0
            seconds[job.tech.id] = seconds.get(job.tech.id, 0.0) + job.seconds["compute"]
            progress.mark([job], f"{job.model.id}: {job.tech.id}" + (f" for {job.image.name}" if job.per_image else ""))


def _synthesize(ws: Workspace, job: Job) -> None:
    """One synthesis cell: the image's own class (target) or its most active channel (unit), as
    the technique's :class:`Inputs` say."""
    import numpy as np

    from . import registry
    from .synthesis import synthesize

    inputs = registry.get(job.tech.name).inputs
    adapter = ws.adapter(job)
    x = ws.image(job).input_for(adapter)[None].to(adapter.device)
    kwargs: dict[str, Any] = {"mean": adapter.mean, "std": adapter.std}
    if job.layer is not None:
        kwargs["layer"] = job.layer
    if inputs.image == "required":
        kwargs["image"] = x
    if inputs.unit == "target":
        kwargs["target"] = job.target
    elif inputs.unit == "channel":
        job.unit = kwargs["channel"] = _top_channel(adapter, x, job.layer)
    result = synthesize(adapter.model, job.tech.name, **kwargs, **job.params)
    out = result.image[0].numpy()
    if not np.isfinite(out).all():
        raise FloatingPointError(f"{job.tech.name} produced NaN or Inf values")
    job.result = out
    job.trace = [round(float(v), 5) for v in result.trace[:, 0]]


def _top_channel(adapter: ModelAdapter, x: torch.Tensor, layer: str) -> int:
    """The channel of ``layer`` with the highest mean activation on ``x`` (one image)."""
    import torch

    from .hooks import capture, prepared

    with prepared(adapter.model), torch.no_grad(), capture(adapter.model, [layer]) as acts:
        adapter.model(x)
    a = acts[layer]
    return int(a.flatten(2).mean(2)[0].argmax()) if a.dim() == 4 else int(a[0].argmax())


#: Every family by name, in the order a build computes them.
_ALL: tuple[Family, ...] = (Attribution(), Synthesis())
FAMILIES: Mapping[str, Family] = {f.name: f for f in _ALL}


def get(name: str) -> Family:
    """The family called ``name``; a KeyError naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown technique family {name!r}; families are {', '.join(FAMILIES)}") from None


def partition(jobs: Sequence[Job]) -> list[tuple[Family, list[Job]]]:
    """Each family that has jobs, in :data:`FAMILIES` order, with its jobs in their order."""
    by_family: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        by_family[job.family.name].append(job)
    return [(f, by_family[f.name]) for f in FAMILIES.values() if by_family[f.name]]
