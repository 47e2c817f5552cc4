"""Scores of gallery cells, through the cache: deletion/insertion, baselines, sanity, the
per-model ranking, and how other models rank a class visualization's target."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from . import metrics, registry
from .cache import Cache, cache_key
from .jobs import Job, Workspace, model_input
from .manifest import MetricsSpec
from .records import Ranking
from .synthesis.api import spec_of
from .synthesis.transfer import class_rank

BASELINES = {"random map": lambda shape: metrics.random_map(shape, seed=0),
             "centre Gaussian": metrics.center_gaussian_map}


def _rank_by(name: str) -> str:
    """Signed maps and CAMs rank by value; gradient maps by magnitude (their saliency view)."""
    return "signed" if registry.get(name).kind in ("signed", "cam") else "abs"


def _protocol(spec: MetricsSpec) -> dict[str, Any]:
    return {"steps": spec.steps, "substrate": spec.substrate}


def _di(ws: Workspace, jobs: list[Job], maps: torch.Tensor, spec: MetricsSpec, rank_by: str,
        batch_size: int) -> metrics.DeletionInsertion:
    adapter = ws.adapter(jobs[0])
    return metrics.deletion_insertion(
        adapter.model, ws.inputs(jobs).to(adapter.device), maps.to(adapter.device), [j.target for j in jobs],
        steps=spec.steps, substrate=spec.substrate, rank_by=rank_by,  # type: ignore[arg-type]
        mean=adapter.mean, std=adapter.std, batch_size=batch_size)


def _groups(jobs: list[Job]) -> dict[tuple[str, str], list[Job]]:
    """Successful attribution jobs by (model id, technique id)."""
    groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for j in jobs:
        if j.result is not None and not j.error and j.family == "attribution":
            groups[(j.model.id, j.tech.id)].append(j)
    return groups


def _sanity_wanted(spec: MetricsSpec, name: str) -> bool:
    return spec.sanity and (spec.sanity_techniques is None or name in spec.sanity_techniques)


def task_count(jobs: list[Job], spec: MetricsSpec) -> int:
    """How many progress steps :func:`score` takes at most for these jobs (fewer when cells fail)."""
    if not spec.enabled:
        return 0
    names = {(j.model.id, j.tech.id): j.tech.name for j in jobs if j.family == "attribution"}
    return sum(int(spec.deletion_insertion) + int(_sanity_wanted(spec, name)) for name in names.values())


def score(jobs: list[Job], ws: Workspace, spec: MetricsSpec, cache: Cache, batch_size: int,
          progress: Any) -> list[Ranking]:
    """Attach ``metrics`` (AUCs, sanity) and ``curves`` to every successful attribution job, the
    transfer ranks (:func:`_transfer_ranks`) to every class visualization, and return one ranking
    per model (techniques and the two baselines by insertion - deletion)."""
    if not spec.enabled:
        return []
    _transfer_ranks(jobs, ws, cache)
    groups = _groups(jobs)
    baselines: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    if spec.deletion_insertion:
        seen: set[tuple[str, str]] = set()
        for (model_id, tech_id), group in groups.items():
            _deletion_insertion(ws, group, spec, cache, batch_size)
            for j in group:
                if (j.model.id, j.image.id) not in seen:
                    seen.add((j.model.id, j.image.id))
                    for name, (d, i) in _baseline_scores(ws, j, spec, cache, batch_size).items():
                        baselines[j.model.id][name].append((d, i))
            progress.step(1, f"{model_id}: deletion/insertion of {tech_id}")
    for (model_id, tech_id), group in groups.items():
        if _sanity_wanted(spec, group[0].tech.name):
            _sanity(ws, group, spec, cache, batch_size)
            progress.step(1, f"{model_id}: sanity of {tech_id}")
        else:
            for j in group:
                j.skipped["sanity"] = ("not run: [metrics] sanity is off" if not spec.sanity else
                                       "not run: not listed in [metrics] sanity_techniques")
    return _rankings(groups, baselines, spec) if spec.deletion_insertion else []


def _transfer_ranks(jobs: list[Job], ws: Workspace, cache: Cache) -> None:
    """``metrics["rank under M"]`` of each class visualization: the target's rank (1 = top) when
    every other model M of the gallery with as many classes classifies the image (resized to M's
    input size); a picture of the class ranks high for models it was not made with."""
    for j in jobs:
        if j.family != "synthesis" or j.result is None or j.error or spec_of(j.tech.name).unit != "target":
            continue
        assert j.target is not None
        image = torch.from_numpy(j.result.astype(np.float32))[None]
        for other_id, other in ws.models.items():
            if other_id == j.model.id or other.num_classes != ws.adapter(j).num_classes:
                continue
            key = cache_key(kind="transfer", cell=j.key, **model_input(other, j.image))
            entry = cache.get(key)
            if entry is None:
                rank = class_rank(other.model, image, j.target, size=other.size, mean=other.mean, std=other.std)[0]
                cache.put(key, np.array([rank], dtype=np.float32), {"judge": other_id})
            else:
                rank = int(entry.array[0])
            j.metrics[f"rank under {other_id}"] = rank


def _deletion_insertion(ws: Workspace, group: list[Job], spec: MetricsSpec, cache: Cache, batch_size: int) -> None:
    keys = [cache_key(kind="deletion_insertion", map=j.key, **_protocol(spec)) for j in group]
    todo = []
    for j, key in zip(group, keys):
        entry = cache.get(key)
        if entry is None:
            todo.append((j, key))
        else:
            _attach(j, entry.array)
    if todo:
        todo_jobs = [j for j, _ in todo]
        maps = torch.from_numpy(np.stack([j.result for j in todo_jobs]).astype(np.float32))
        res = _di(ws, todo_jobs, maps, spec, _rank_by(todo_jobs[0].tech.name), batch_size)
        for n, (j, key) in enumerate(todo):
            curves = _curves(res, n)
            cache.put(key, curves, {"protocol": res.protocol})
            _attach(j, curves)


def _curves(res: metrics.DeletionInsertion, n: int) -> np.ndarray:
    """Image ``n``'s (deletion, insertion) curves as one (2, steps + 1) array, as cached."""
    return np.stack([res.deletion_curve[n], res.insertion_curve[n]]).astype(np.float32)


def _attach(job: Job, curves: np.ndarray) -> None:
    auc = metrics.auc(curves)
    job.metrics["deletion_auc"] = round(float(auc[0]), 4)
    job.metrics["insertion_auc"] = round(float(auc[1]), 4)
    job.curves = {"deletion": [round(float(v), 4) for v in curves[0]],
                  "insertion": [round(float(v), 4) for v in curves[1]]}


def _baseline_scores(ws: Workspace, job: Job, spec: MetricsSpec, cache: Cache,
                     batch_size: int) -> dict[str, tuple[float, float]]:
    out = {}
    adapter = ws.adapter(job)
    size = adapter.size
    for name, make in BASELINES.items():
        key = cache_key(kind="baseline", name=name, **model_input(adapter, job.image), target=job.target,
                        **_protocol(spec))
        entry = cache.get(key)
        if entry is None:
            res = _di(ws, [job], make((1, 1, size, size)), spec, "signed", batch_size)
            curves = _curves(res, 0)
            cache.put(key, curves, {"protocol": res.protocol})
        else:
            curves = entry.array
        auc = metrics.auc(curves)
        out[name] = (float(auc[0]), float(auc[1]))
    return out


def _sanity(ws: Workspace, group: list[Job], spec: MetricsSpec, cache: Cache, batch_size: int) -> None:
    keys = [cache_key(kind="sanity", map=j.key, steps=spec.sanity_steps) for j in group]
    entries = [cache.get(k) for k in keys]
    if any(e is None for e in entries):
        first = group[0]
        adapter = ws.adapter(first)
        res = metrics.sanity(adapter.model, ws.inputs(group).to(adapter.device), first.tech.name,
                             [j.target for j in group], first.layer, max_steps=spec.sanity_steps,
                             batch_size=batch_size, technique_params=dict(first.params),
                             mean=adapter.mean, std=adapter.std)
        for j, key, value in zip(group, keys, res.similarity):
            cache.put(key, np.array([value], dtype=np.float32), {"protocol": res.protocol})
        values = [float(v) for v in res.similarity]
    else:
        values = [float(e.array[0]) for e in entries]  # type: ignore[union-attr]
    for j, v in zip(group, values):
        if np.isfinite(v):
            j.metrics["sanity"] = round(v, 4)
        else:
            j.skipped["sanity"] = "undefined: a map without spread has no rank correlation"


def _rankings(groups: dict[tuple[str, str], list[Job]], baselines: dict[str, dict[str, list[tuple[float, float]]]],
              spec: MetricsSpec) -> list[Ranking]:
    per_model: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for (model_id, tech_id), group in groups.items():
        scored = [j.metrics for j in group if "deletion_auc" in j.metrics]
        if scored:
            per_model[model_id][tech_id] = (float(np.mean([m["deletion_auc"] for m in scored])),
                                            float(np.mean([m["insertion_auc"] for m in scored])))
    protocol = (f"Petsiuk et al. 2018: {spec.steps} steps, deleted pixels -> {spec.substrate}, "
                "inserted onto a blurred copy, target softmax probability; mean over images")
    out = []
    for model_id, scores in per_model.items():
        for name, values in baselines[model_id].items():
            scores[name] = (float(np.mean([d for d, _ in values])), float(np.mean([i for _, i in values])))
        rows = [{"technique": r["technique"], "deletion_auc": round(r["deletion"], 4),
                 "insertion_auc": round(r["insertion"], 4), "score": round(r["score"], 4),
                 "baseline": r["technique"] in BASELINES} for r in metrics.rank_techniques(scores)]
        out.append(Ranking(model_id, rows, protocol))
    return out
