"""One visualization of one image, through the same manifest checks, engine and cache as a build."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from . import postprocess, registry
from .manifest import ManifestError, parse_manifest
from .engine import default_batch_size
from .cache import Cache
from .executor import LocalExecutor
from .jobs import plan, workspace
from .pipeline import load_cached
from .progress import Progress
from .sitewriter import pictures


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ManifestError([f"--param: expected key=value, got {pair!r}"])
        try:
            params[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            params[key.strip()] = value
    return params


def explain_one(image: Path, model: str, weights: str | None, technique: str, target: str | None,
                layer: str | None, params: tuple[str, ...], variant: str | None, output: Path,
                cache_dir: Path) -> Path:
    """Compute (or fetch from the cache) one map and write one of its pictures to ``output``."""
    img: dict[str, Any] = {"path": str(image.absolute())}
    if target is not None:
        img["target"] = int(target) if target.lstrip("-").isdigit() else target
    mdl: dict[str, Any] = {"name": model}
    if weights is not None:
        mdl["weights"] = weights
    if layer is not None:
        mdl["layers"] = {technique: layer}
    data = {"images": [img], "models": [mdl], "techniques": [{"name": technique, "params": _parse_params(params)}]}
    manifest = parse_manifest(data, path=None, root=Path.cwd())
    ws = workspace(manifest)
    cache = Cache(cache_dir)
    (job,), _ = plan(manifest, ws, cache, force=False)
    adapter = ws.adapter(job)
    if load_cached([job], cache):
        LocalExecutor(ws, default_batch_size(adapter.device), fail_fast=True).run([job], cache, Progress(0, True), {})
    result = job.result
    tech = registry.get(technique)
    pics = pictures(tech, result, adapter.fit(ws.image(job).pil))
    chosen = [p for p in pics if variant in (None, p[0])]
    if not chosen:
        raise ManifestError([f"--variant: {technique} has no variant {variant!r}; "
                             f"choose from {', '.join(p[0] for p in pics)}"])
    postprocess.save_png(chosen[0][2], output)
    return output
