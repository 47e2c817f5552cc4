"""Scores of gallery cells, through the cache: deletion/insertion, baselines, sanity, the
per-model ranking, and how other models rank a class visualization's target."""
from __future__ import annotations

import functools
import inspect
import time
from collections import defaultdict
from typing import Any, Callable, Mapping

import numpy as np
import torch

from galleryvis import metrics, registry
from galleryvis.storage.cache import Cache, cache_key
from galleryvis.storage.images import file_sha256
from galleryvis.targets import Objective, per_image
from galleryvis.engine.chunking import Chunking
from galleryvis.engine import Call, chunking_of
from galleryvis.build.executor import chunking_for
from galleryvis.errors import one_line
from galleryvis.hooks import counting
from galleryvis.build.jobs import Job, Workspace, model_covers, model_input, truth_mask
from galleryvis.config.manifest import MetricsSpec
from galleryvis.sources.loading import ModelAdapter
from galleryvis.render.records import Ranking
from galleryvis.synthesis.transfer import class_rank

BASELINES = {"random map": lambda shape: metrics.random_map(shape, seed=0),
             "centre Gaussian": metrics.center_gaussian_map}


def _rank_by(name: str) -> str:
    """Signed maps and CAMs rank by value; gradient maps by magnitude (their saliency view)."""
    return "signed" if registry.get(name).kind in ("signed", "cam") else "abs"


def _protocol(spec: MetricsSpec) -> dict[str, Any]:
    return {"steps": spec.steps, "substrate": spec.substrate}


def _groups(jobs: list[Job]) -> dict[tuple[str, str], list[Job]]:
    """Successful jobs of scored families (attribution) by (model id, technique id)."""
    groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for j in jobs:
        if j.result is not None and not j.error and j.family.scored:
            groups[(j.model.id, j.tech.id)].append(j)
    return groups


def _sanity_wanted(spec: MetricsSpec, name: str) -> bool:
    return spec.sanity and (spec.sanity_techniques is None or name in spec.sanity_techniques)


def task_count(jobs: list[Job], spec: MetricsSpec) -> int:
    """How many progress steps :func:`score` takes at most for these jobs (fewer when cells fail):
    one per cell of a scored family (attribution) for deletion / insertion, for ROAD and for the
    metrics ``compute`` names, one per cell the sanity check scores."""
    if not spec.enabled:
        return 0
    cells = [j for j in jobs if j.family.scored]
    return sum(int(spec.deletion_insertion) + int(spec.road) + int(bool(spec.compute))
               + int(_sanity_wanted(spec, j.tech.name)) for j in cells)


def score(jobs: list[Job], ws: Workspace, spec: MetricsSpec, cache: Cache, batch_size: int | None,
          progress: Any, share: bool = True) -> list[Ranking]:
    """Attach ``metrics`` (AUCs, sanity) and ``curves`` to every successful attribution job, the
    transfer ranks (:func:`_transfer_ranks`) to every class visualization, and return one ranking
    per model (techniques and the two baselines by insertion - deletion). ``batch_size``: as for
    the attribution, an int (forward-only passes 4x) or None for each model's measured chunks.

    Passes are shared: deletion / insertion scores every map of one (model, image), baselines
    included, in one call (their perturbed inputs batched together); the sanity check runs one
    cascade per model and image set, every scored technique through each step at once. With
    ``share`` off, every technique is scored in calls of its own (the same scores, for measuring
    what sharing saves)."""
    if not spec.enabled:
        return []
    _transfer_ranks(jobs, ws, cache)
    groups = _groups(jobs)
    baselines: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    if spec.deletion_insertion:
        cells: dict[tuple[str, ...], list[Job]] = defaultdict(list)
        for group in groups.values():
            for j in group:
                cells[(j.model.id, j.image.id) + (() if share else (j.tech.id,))].append(j)
        for (model_id, *_), cell in cells.items():
            what = f"{model_id}: deletion/insertion on {cell[0].image.name}"
            with counting([ws.adapter(cell[0]).model], progress.counter(what, _di_images(len(cell), spec.steps))):
                for name, aucs in _deletion_insertion(ws, cell, spec, cache, batch_size).items():
                    baselines[model_id][name].append(aucs)
            progress.step(len(cell), what)
    if spec.road:
        for (model_id, tech_id), group in groups.items():
            _road(ws, group, spec, cache, batch_size)
            progress.step(len(group), f"{model_id}: ROAD of {tech_id}")
    sanity: dict[tuple[Any, ...], list[list[Job]]] = defaultdict(list)
    for (model_id, tech_id), group in groups.items():
        if _sanity_wanted(spec, group[0].tech.name):
            sanity[(model_id, tuple(j.image.id for j in group)) + (() if share else (tech_id,))].append(group)
        else:
            for j in group:
                j.skipped["sanity"] = ("not run: [metrics] sanity is off" if not spec.sanity else
                                       "not run: not listed in [metrics] sanity_techniques")
    for (model_id, *_), same_images in sanity.items():
        what = f"{model_id}: sanity of {len(same_images)} technique(s)"
        _sanity(ws, same_images, spec, cache, batch_size, functools.partial(progress.within, what))
        progress.step(sum(map(len, same_images)), what)
    by_model: dict[str, list[Job]] = defaultdict(list)
    for (model_id, _), group in groups.items() if spec.compute else ():
        by_model[model_id] += group
    for model_id, group in by_model.items():
        what = f"{model_id}: {', '.join(spec.compute)} of {len({j.tech.id for j in group})} technique(s)"
        _evaluations(ws, group, spec, cache, batch_size)
        progress.step(len(group), what)
    return _rankings(ws, groups, baselines, spec) if spec.deletion_insertion else []


def _evaluations(ws: Workspace, group: list[Job], spec: MetricsSpec, cache: Cache, batch_size: int | None) -> None:
    """``[metrics] compute`` for the maps of one model, through the cache: each metric of
    :mod:`galleryvis.metrics` at its defaults, with the target's objective, in one call for the
    maps of every technique (their perturbed inputs batched together; :func:`_calls`); a metric
    that explains again gets the technique, its layer and parameters instead of the maps; a
    localisation metric runs on the images with ground truth (``mask`` or ``box``) and says why
    it did not on the others. Completeness is shown as its relative error."""
    adapter = ws.adapter(group[0])
    for name in spec.compute:
        fn = getattr(metrics, name)
        params = inspect.signature(fn).parameters
        keys = [cache_key(kind="metric", name=name, map=j.key, **({"truth": _truth_covers(j)} if "mask" in params
                                                                   else {})) for j in group]
        values = {k: float(e.array[0]) for k in keys if (e := cache.get(k)) is not None}
        todo = [(j, k) for j, k in zip(group, keys) if k not in values]
        if "mask" in params:
            for j, _ in todo:
                if j.image.mask is None and j.image.box is None:
                    j.skipped[name] = "not run: the image has no ground truth (`[[images]] mask` or `box`)"
            todo = [(j, k) for j, k in todo if name not in j.skipped]
        for call in _calls(name, params, todo):
            jobs = [j for j, _ in call]
            x = ws.inputs(jobs).to(adapter.device)
            objective = per_image([ws.objective(j) for j in jobs])
            given = {"mean": adapter.mean, "std": adapter.std, "num_classes": adapter.num_classes,
                     "batch_size": _chunks(adapter, cache, batch_size).forward}
            kwargs = {k: v for k, v in given.items() if k in params}
            if "mask" in params:
                kwargs["mask"] = torch.from_numpy(np.stack([truth_mask(ws.adapter(j), ws.image(j)) for j in jobs]))
            try:
                out = np.asarray(_evaluate(fn, name, adapter, x, jobs, objective, kwargs))
            except Exception as exc:  # noqa: BLE001  (one metric of one row fails, not the build)
                for j in jobs:
                    j.skipped[name] = f"failed: {one_line(exc)}"
                continue
            out = out["relative_error"] if out.dtype.names else out  # completeness: its relative error
            for (j, key), value in zip(call, out.astype(np.float64)):
                values[key] = float(value)
                cache.put(key, np.array([value], dtype=np.float32), {"metric": name, "image": j.image.name})
        for j, key in zip(group, keys):
            if key in values and np.isfinite(values[key]):
                j.metrics[name] = round(values[key], 4)
            elif key in values:
                j.skipped[name] = "undefined for this map (see docs/metrics.md)"


def _calls(name: str, params: Mapping[str, Any], todo: list[tuple[Job, str]]) -> list[list[tuple[Job, str]]]:
    """The calls of metric ``name`` for ``todo`` (jobs and their cache keys): one for all the maps
    of a shape, whatever their technique, so that the perturbed inputs of every technique of an
    image share their forward passes; one per technique for a metric that explains again (it
    takes a technique) or whose values compare the images of its call."""
    calls: dict[Any, list[tuple[Job, str]]] = defaultdict(list)
    for job, key in todo:
        alone = "technique" in params or metrics.METRICS[name].compares_images
        calls[job.tech.id if alone else _view(name, job).shape].append((job, key))
    return list(calls.values())


def _view(name: str, job: Job) -> np.ndarray:
    """The job's map as metric ``name`` reads it: as it is, or, for a metric that reads one value
    per pixel, a map of several channels as the gallery ranks it (summed over channels, by
    magnitude for gradient maps)."""
    m = np.asarray(job.result, dtype=np.float32)
    if metrics.METRICS[name].one_channel and m.shape[0] > 1:
        m = (np.abs(m) if _rank_by(job.tech.name) == "abs" else m).sum(0, keepdims=True)
    return m


def _evaluate(fn: Callable[..., Any], name: str, adapter: ModelAdapter, x: torch.Tensor, jobs: list[Job],
              objective: Objective, kwargs: dict[str, Any]) -> Any:
    """One metric on the jobs' maps (:func:`_view`), or, for a metric that explains again, on
    their technique."""
    first = jobs[0]
    if "technique" in inspect.signature(fn).parameters:
        return fn(adapter.model, x, first.tech.name, objective, first.layer, technique_params=first.params, **kwargs)
    maps = torch.from_numpy(np.stack([_view(name, j) for j in jobs])).to(adapter.device)
    return fn(adapter.model, x, maps, objective, **kwargs)


def _truth_covers(job: Job) -> dict[str, Any]:
    """What a localisation metric's ground truth is: the mask file's hash, or the boxes."""
    return {"mask": file_sha256(job.image.mask) if job.image.mask else None, "box": job.image.box}


def _transfer_ranks(jobs: list[Job], ws: Workspace, cache: Cache) -> None:
    """``metrics["rank under M"]`` of each class visualization: the target's rank (1 = top) when
    every other model M of the gallery with as many classes classifies the image (resized to M's
    input size); a picture of the class ranks high for models it was not made with. Class
    visualizations: the cells of a transfer-ranked family (synthesis) whose unit is a class."""
    for j in jobs:
        if not j.family.transfer_ranked or j.result is None or j.error \
                or registry.get(j.tech.name).inputs.unit != "target":
            continue
        assert j.target is not None
        image = torch.from_numpy(j.result.astype(np.float32))[None]
        for other_id, other in ws.models.items():
            if other_id == j.model.id or other.num_classes != ws.adapter(j).num_classes:
                continue
            key = cache_key(kind="transfer", cell=j.key, **model_covers(other))  # the cell's key covers its image
            entry = cache.get(key)
            if entry is None:
                rank = class_rank(other.model, image, j.target, size=other.size, mean=other.mean, std=other.std)[0]
                cache.put(key, np.array([rank], dtype=np.float32), {"judge": other_id})
            else:
                rank = int(entry.array[0])
            j.metrics[f"rank under {other_id}"] = rank


def _di_images(maps: int, steps: int) -> int:
    """Images through the model when deletion / insertion scores ``maps`` maps of one image and
    the baselines (:func:`galleryvis.metrics.deletion_insertion`'s cost), for the progress."""
    return (maps + len(BASELINES)) * (2 * steps - 2) + 3


def _chunks(adapter: ModelAdapter, cache: Cache, batch_size: int | None) -> Chunking:
    """The chunk sizes scoring runs ``adapter``'s passes at: ``batch_size``'s, or the model's measured ones."""
    return chunking_for(adapter, cache) if batch_size is None else chunking_of(batch_size, adapter.device)


def _deletion_insertion(ws: Workspace, cell: list[Job], spec: MetricsSpec, cache: Cache,
                        batch_size: int | None) -> dict[str, tuple[float, float]]:
    """Deletion / insertion of every job of one (model, image) and of the baselines on that image,
    what the cache lacks in one call; attaches the jobs' scores and returns the baselines' AUCs."""
    first = cell[0]
    adapter = ws.adapter(first)
    x = ws.inputs([first])
    keys = [cache_key(kind="deletion_insertion", map=j.key, **_protocol(spec)) for j in cell]
    base_keys = {name: cache_key(kind="baseline", name=name, **model_input(adapter, first.image),
                                 target=first.target, **_protocol(spec)) for name in BASELINES}
    curves: dict[str, np.ndarray] = {}
    for key in keys + list(base_keys.values()):
        entry = cache.get(key)
        if entry is not None:
            curves[key] = entry.array
    todo = [(key, torch.from_numpy(j.result).float()[None], _rank_by(j.tech.name))
            for j, key in zip(cell, keys) if key not in curves]
    todo += [(key, BASELINES[name]((1, 1, *x.shape[-2:])), "signed") for name, key in base_keys.items()
             if key not in curves]
    if todo:
        t0 = time.perf_counter()
        maps = torch.cat([m.sum(1, keepdim=True) for _, m, _ in todo])  # what the ranking sums anyway
        res = metrics.deletion_insertion(
            adapter.model, x.to(adapter.device), maps.to(adapter.device), [ws.objective(first)],
            steps=spec.steps, substrate=spec.substrate, rank_by=[r for _, _, r in todo],  # type: ignore[misc]
            images=[0] * len(todo), mean=adapter.mean, std=adapter.std,
            batch_size=_chunks(adapter, cache, batch_size).forward)
        for n, (key, _, _) in enumerate(todo):
            curves[key] = np.stack([res.deletion_curve[n], res.insertion_curve[n]]).astype(np.float32)
            cache.put(key, curves[key], {"protocol": res.protocol})
        share = (time.perf_counter() - t0) / len(todo)
        done = {key for key, _, _ in todo}
        for j, key in zip(cell, keys):
            if key in done:
                j.seconds["scoring"] = j.seconds.get("scoring", 0.0) + share
    for j, key in zip(cell, keys):
        _attach(j, curves[key])
    return {name: tuple(float(v) for v in metrics.auc(curves[key])) for name, key in base_keys.items()}  # type: ignore[misc]


def _road(ws: Workspace, group: list[Job], spec: MetricsSpec, cache: Cache, batch_size: int | None) -> None:
    """``road_morf`` and ``road_lerf`` of every job of one (model, technique), through the cache."""
    adapter = ws.adapter(group[0])
    for order in ("morf", "lerf"):
        keys = [cache_key(kind="road", map=j.key, percentile=spec.road_percentile, order=order) for j in group]
        entries = [cache.get(k) for k in keys]
        values = [None if e is None else float(e.array[0]) for e in entries]
        todo = [i for i, v in enumerate(values) if v is None]
        if todo:
            jobs = [group[i] for i in todo]
            maps = torch.from_numpy(np.stack([j.result for j in jobs]).astype(np.float32))
            fresh = metrics.road(adapter.model, ws.inputs(jobs).to(adapter.device), maps.to(adapter.device),
                                 [ws.objective(j) for j in jobs], percentile=spec.road_percentile,
                                 order=order,  # type: ignore[arg-type]
                                 rank_by=_rank_by(jobs[0].tech.name),  # type: ignore[arg-type]
                                 batch_size=_chunks(adapter, cache, batch_size).forward)
            for i, v in zip(todo, fresh):
                cache.put(keys[i], np.array([v], dtype=np.float32),
                          {"protocol": f"ROAD {order}, {spec.road_percentile:g}% of the pixels removed"})
                values[i] = float(np.float32(v))
        for j, v in zip(group, values):
            j.metrics[f"road_{order}"] = round(v, 4)  # type: ignore[arg-type]


def _attach(job: Job, curves: np.ndarray) -> None:
    auc = metrics.auc(curves)
    job.metrics["deletion_auc"] = round(float(auc[0]), 4)
    job.metrics["insertion_auc"] = round(float(auc[1]), 4)
    job.curves = {"deletion": [round(float(v), 4) for v in curves[0]],
                  "insertion": [round(float(v), 4) for v in curves[1]]}


def _sanity(ws: Workspace, groups: list[list[Job]], spec: MetricsSpec, cache: Cache, batch_size: int | None,
            within: Callable[[int, int], None]) -> None:
    """The sanity check of several techniques of one model on the same images: what the cache
    lacks through one cascade (:func:`galleryvis.metrics.sanity_many`), ``within(done, total)``
    as it goes."""
    keys = {g[0].tech.id: [cache_key(kind="sanity", map=j.key, steps=spec.sanity_steps) for j in g] for g in groups}
    values: dict[str, list[float]] = {}
    for tech_id, tech_keys in keys.items():
        entries = [cache.get(k) for k in tech_keys]
        if all(e is not None for e in entries):
            values[tech_id] = [float(e.array[0]) for e in entries]  # type: ignore[union-attr]
    todo = [g for g in groups if g[0].tech.id not in values]
    if todo:
        t0 = time.perf_counter()
        first = todo[0][0]
        adapter = ws.adapter(first)
        calls = {g[0].tech.id: Call(g[0].tech.name, g[0].layer, g[0].params) for g in todo}
        results = metrics.sanity_many(adapter.model, ws.inputs(todo[0]).to(adapter.device), calls,
                                      [ws.objective(j) for j in todo[0]], max_steps=spec.sanity_steps,
                                      batch_size=_chunks(adapter, cache, batch_size), mean=adapter.mean,
                                      std=adapter.std, control=False, within=within)
        for tech_id, res in results.items():
            values[tech_id] = [float(v) for v in res.similarity]
            for key, value in zip(keys[tech_id], res.similarity):
                cache.put(key, np.array([value], dtype=np.float32), {"protocol": res.protocol})
        share = (time.perf_counter() - t0) / sum(map(len, todo))
        for j in (j for g in todo for j in g):
            j.seconds["scoring"] = j.seconds.get("scoring", 0.0) + share
    for g in groups:
        for j, v in zip(g, values[g[0].tech.id]):
            if np.isfinite(v):
                j.metrics["sanity"] = round(v, 4)
            else:
                j.skipped["sanity"] = "undefined: a map without spread has no rank correlation"


def _rankings(ws: Workspace, groups: dict[tuple[str, str], list[Job]],
              baselines: dict[str, dict[str, list[tuple[float, float]]]], spec: MetricsSpec) -> list[Ranking]:
    per_model: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for (model_id, tech_id), group in groups.items():
        scored = [j.metrics for j in group if "deletion_auc" in j.metrics]
        if scored:
            per_model[model_id][tech_id] = (float(np.mean([m["deletion_auc"] for m in scored])),
                                            float(np.mean([m["insertion_auc"] for m in scored])))
    first = {model_id: group[0] for (model_id, _), group in groups.items()}
    out = []
    for model_id, scores in per_model.items():
        read_as = ws.adapter(first[model_id]).objective(0).confidence_words
        protocol = (f"Petsiuk et al. 2018: {spec.steps} steps, deleted pixels -> {spec.substrate}, "
                    f"inserted onto a blurred copy, target {read_as}; mean over images")
        for name, values in baselines[model_id].items():
            scores[name] = (float(np.mean([d for d, _ in values])), float(np.mean([i for _, i in values])))
        rows = [{"technique": r["technique"], "deletion_auc": round(r["deletion"], 4),
                 "insertion_auc": round(r["insertion"], 4), "score": round(r["score"], 4),
                 "baseline": r["technique"] in BASELINES} for r in metrics.rank_techniques(scores)]
        out.append(Ranking(model_id, rows, protocol))
    return out
