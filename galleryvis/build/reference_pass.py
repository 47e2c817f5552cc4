"""The reference stage: each concept atlas's reference examples (Achtibat et al. 2023, relevance
and activation maximization), computed once per model, layer and reference set and cached.

For every model and ``crp`` row with a computed cell, :func:`compute_references` ranks the
reference set (``[concepts] reference``; else the gallery's own images) for every channel of the
row's layer with :func:`~galleryvis.attribution.references.reference_examples`, by relevance
(each image's top-1 class, the row's LRP parameters) and by activation, keeping the best
:data:`EXAMPLES` of each; then, for each channel the atlas shows, each example's box where the
channel's relevance lies (:func:`~galleryvis.attribution.references.crop_box` of its
:func:`~galleryvis.attribution.references.reference_heatmaps` at the example's neuron). Both
are cached by content: the rankings under the model, layer, reference files' hashes and
parameters (so a rebuild runs no reference pass), the boxes under the rankings' key and the
channel (so a new concept costs only its own heatmaps).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from galleryvis import registry
from galleryvis.attribution.references import crop_box, reference_examples, reference_heatmaps
from galleryvis.build.executor import chunking_for
from galleryvis.build.jobs import Job, Workspace, model_covers
from galleryvis.build.progress import Progress
from galleryvis.config.manifest import Manifest
from galleryvis.engine.chunking import Chunking
from galleryvis.errors import ImageError, ManifestError
from galleryvis.hooks import counting
from galleryvis.sources.loading import ModelAdapter
from galleryvis.storage.cache import Cache, cache_key
from galleryvis.storage.images import file_sha256, load_image

#: Examples kept per concept and mode (fewer when the set is smaller).
EXAMPLES = 4
#: The two rankings, in the order the atlas shows them.
MODES = ("relevance", "activation")
#: Bump when a change here changes what a cached ranking or box would contain.
VERSION = 1


class Example(NamedTuple):
    """One reference example of a concept: ``file``, its place in the reference set; ``value``,
    the channel's share of the image's relevance (or activation) at the layer; ``box``, where
    the channel's relevance lies in the model's input, ``(row0, row1, col0, col1)`` inclusive."""

    file: int
    value: float
    box: tuple[int, int, int, int]


@dataclass
class RowReferences:
    """The reference examples of one model and concept row: the ``layer``, the reference set's
    ``files`` and, per channel the atlas shows, its examples per mode (:data:`MODES`), best first."""

    layer: str
    files: tuple[Path, ...]
    examples: dict[int, dict[str, list[Example]]] = field(default_factory=dict)


@dataclass
class _Group:
    """The concept rows of one model that share a layer and LRP parameters: one reference pass."""

    model_id: str
    layer: str
    params: dict[str, Any]
    rows: list[str] = field(default_factory=list)
    channels: set[int] = field(default_factory=set)


def _lrp_params(job: Job) -> dict[str, Any]:
    """The row's parameters that LRP takes (its concept count and random channels aside)."""
    lrp = registry.get("lrp").params
    return {k: v for k, v in job.params.items() if k in lrp}


def _groups(jobs: list[Job], with_channels: bool = True) -> list[_Group]:
    """The reference passes ``jobs`` need: per model, layer and LRP parameters of a concept row
    (a family with ``reference_examples``), with the channels in its computed cells' top-k."""
    found: dict[tuple[str, str, str], _Group] = {}
    for job in jobs:
        if not job.family.reference_examples or not isinstance(job.layer, str):
            continue
        params = _lrp_params(job)
        key = (job.model.id, job.layer, repr(sorted(params.items())))
        group = found.setdefault(key, _Group(job.model.id, job.layer, params))
        if job.tech.id not in group.rows:
            group.rows.append(job.tech.id)
        if with_channels and job.concepts is not None and not job.error:
            group.channels.update(int(c) for c in job.concepts["channels"])
    return list(found.values())


def pass_count(jobs: list[Job]) -> int:
    """Progress steps :func:`compute_references` takes: one per reference pass."""
    return len(_groups(jobs, with_channels=False))


class ReferenceSet:
    """The reference set of a build: its files, their hashes, and each model's inputs of them
    (decoded on first use; a file that does not decode is a manifest error at
    ``concepts.reference`` naming it)."""

    def __init__(self, manifest: Manifest, ws: Workspace) -> None:
        self.label = manifest.label
        self.loaded = {img.ref.path: img for img in ws.images.values()}
        if manifest.concepts.reference is None:
            self.files = tuple(dict.fromkeys(img.ref.path for img in ws.images.values()))
            self.shas = tuple(self.loaded[p].ref.sha for p in self.files)
        else:
            self.files = manifest.concepts.reference
            self.shas = tuple(self._read(file_sha256, p) for p in self.files)
        self._inputs: dict[str, torch.Tensor] = {}

    def _read(self, how: Any, path: Path) -> Any:
        try:
            return how(path)
        except (ImageError, OSError) as exc:
            raise ManifestError([f"{self.label}: concepts.reference: {exc}"]) from None

    def images(self) -> Iterator[Any]:
        """Each file decoded (a PIL image), in order."""
        for path in self.files:
            yield self.loaded[path].pil if path in self.loaded else self._read(load_image, path)

    def inputs(self, adapter: ModelAdapter) -> torch.Tensor:
        """The set as the model's normalized inputs, (N, 3, size, size), made once per model."""
        if adapter.id not in self._inputs:
            self._inputs[adapter.id] = torch.stack([adapter.preprocess(pil) for pil in self.images()])
        return self._inputs[adapter.id]


def ranking_key(adapter: ModelAdapter, layer: str, shas: tuple[str, ...], params: dict[str, Any]) -> str:
    """The cache key of a reference pass: the model, layer, reference files' contents, LRP
    parameters, examples kept, and the device class (maps differ slightly across devices)."""
    return cache_key(kind="references", version=VERSION, **model_covers(adapter), layer=layer, files=list(shas),
                     params=params, top=EXAMPLES, modes=list(MODES), device=adapter.device.type)


def boxes_key(ranking: str, channel: int) -> str:
    """The cache key of one channel's example boxes, beside the rankings they crop."""
    return cache_key(kind="reference-boxes", version=VERSION, ranking=ranking, channel=channel)


def _rankings(adapter: ModelAdapter, refs: ReferenceSet, group: _Group, chunks: Chunking) -> np.ndarray:
    """Both rankings of every channel: (modes, [indices, values, positions], C, top), float64."""
    x = refs.inputs(adapter)
    out = []
    for mode in MODES:
        found = reference_examples(adapter.model, x, None, group.layer, mode=mode, top=EXAMPLES,
                                   batch_size=chunks, mean=adapter.mean, std=adapter.std, **group.params)
        out.append(np.stack([found.indices.numpy(), found.values.numpy(), found.positions.numpy()]).astype(np.float64))
    return np.stack(out)


def _boxes(adapter: ModelAdapter, refs: ReferenceSet, group: _Group, ranked: np.ndarray, channel: int,
           chunks: Chunking) -> np.ndarray:
    """Each example's box of ``channel`` (modes, top, 4), int64: the crop of its heatmap started
    at the example's neuron; one heatmap per distinct (image, neuron) of both modes (a small set
    often ranks the same images by relevance and by activation)."""
    x = refs.inputs(adapter)
    pairs = [(int(f), int(p)) for m in range(len(MODES))
             for f, p in zip(ranked[m, 0, channel], ranked[m, 2, channel])]
    distinct = list(dict.fromkeys(pairs))
    files, positions = (torch.tensor(v, dtype=torch.long) for v in zip(*distinct))
    maps = reference_heatmaps(adapter.model, x[files], channel, group.layer, positions, batch_size=chunks,
                              mean=adapter.mean, std=adapter.std, **group.params)
    box = {pair: crop_box(heat) for pair, heat in zip(distinct, maps)}
    return np.asarray([box[pair] for pair in pairs], dtype=np.int64).reshape(len(MODES), -1, 4)


def compute_references(manifest: Manifest, ws: Workspace, jobs: list[Job], cache: Cache, progress: Progress,
                       batch_size: int | None = None, force: bool = False) -> dict[tuple[str, str], RowReferences]:
    """The reference examples of every concept row's atlas, per (model id, row id): from the
    cache where it has them (unless ``force``), else computed (see the module docstring); one
    progress step per reference pass."""
    groups = _groups(jobs)
    if not groups:
        return {}
    refs = ReferenceSet(manifest, ws)
    out: dict[tuple[str, str], RowReferences] = {}
    for group in groups:
        adapter = ws.models[group.model_id]
        what = f"{adapter.id}: reference examples at {group.layer}"
        found = RowReferences(group.layer, refs.files)
        # the bar moves with the images sent through the model: the set twice, then at most each concept's examples
        images = 2 * len(refs.files) + 2 * min(EXAMPLES, len(refs.files)) * len(group.channels)
        with counting([adapter.model], progress.counter(what, images)):
            _compute(adapter, refs, group, found, cache, batch_size, force)
        for row in group.rows:
            out[(group.model_id, row)] = found
        progress.step(1, what)
    return out


def _compute(adapter: ModelAdapter, refs: ReferenceSet, group: _Group, found: RowReferences, cache: Cache,
             batch_size: int | None, force: bool) -> None:
    """One reference pass into ``found``: the rankings, then each channel's boxes, each from the
    cache where it has them (unless ``force``)."""
    if not group.channels:
        return
    chunks = Chunking.of(batch_size) if batch_size else chunking_for(adapter, cache)
    key = ranking_key(adapter, group.layer, refs.shas, group.params)
    entry = None if force else cache.get(key)
    if entry is None:
        ranked = _rankings(adapter, refs, group, chunks)
        cache.put(key, ranked, {"model": adapter.id, "layer": group.layer, "files": [p.name for p in refs.files]})
    else:
        ranked = entry.array
    for channel in sorted(group.channels):
        bkey = boxes_key(key, channel)
        hit = None if force else cache.get(bkey)
        if hit is None:
            boxes = _boxes(adapter, refs, group, ranked, channel, chunks)
            cache.put(bkey, boxes, {"model": adapter.id, "layer": group.layer, "channel": channel})
        else:
            boxes = hit.array
        found.examples[channel] = {
            mode: [Example(int(f), float(v), (int(b[0]), int(b[1]), int(b[2]), int(b[3])))
                   for f, v, b in zip(ranked[m, 0, channel], ranked[m, 1, channel], boxes[m])]
            for m, mode in enumerate(MODES)}


def reference_keys(manifest: Manifest, ws: Workspace, jobs: list[Job], cache: Cache) -> set[str]:
    """The cache keys the reference stage of a build of these (planned) jobs reads: each pass's
    rankings and the boxes of the channels in its row's cached cells."""
    groups = _groups(jobs, with_channels=False)
    if not groups:
        return set()
    refs = ReferenceSet(manifest, ws)
    by_row: dict[tuple[str, str], set[int]] = defaultdict(set)
    for job in jobs:
        if job.family.reference_examples and job.cached and (entry := cache.get(job.key)) is not None:
            by_row[(job.model.id, job.tech.id)].update(int(c) for c in entry.meta.get("concepts", {}).get("channels", []))
    keys = set()
    for group in groups:
        key = ranking_key(ws.models[group.model_id], group.layer, refs.shas, group.params)
        keys.add(key)
        keys |= {boxes_key(key, c) for row in group.rows for c in by_row[(group.model_id, row)]}
    return keys
