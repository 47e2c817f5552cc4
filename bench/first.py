"""The default gallery's cold build against a floor of plain passes, in one run (issue 35: the
first gallery costs at most the time of 2,000 forward + backward passes of EfficientNet-Lite0).

The floor: EfficientNet-Lite0 (bundled ImageNet weights) at 224 px, batch 1, eval mode, frozen
parameters, one forward and one backward to the input, as every gradient technique pays. Half
of its passes are timed before the build and half after, so a change of load on a shared
machine falls on both sides. The build is ``galleryvis build`` with no manifest (the embedded
default), as a subprocess in an empty temporary folder with an empty cache: interpreter start-up,
models loaded, chunk sizes measured, every cell computed and scored, the site written.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .common import load_inputs
from .rebuild import build_once

#: The floor's passes in all (issue 35's unit) and the target: the cold build in at most this many.
PASSES = 2000


def passes_seconds(passes: int) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) of ``passes`` forward + input-gradient backward passes
    of EfficientNet-Lite0 at 224 px, batch 1, after five untimed ones."""
    from galleryvis.sources.lite import efficientnet_lite0

    model = efficientnet_lite0().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = load_inputs(1, 224, torch.device("cpu"))

    def one() -> None:
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xi)[0].max(), xi)

    for _ in range(5):
        one()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(passes):
        one()
    return time.perf_counter() - t0, time.process_time() - c0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def transfer_ranks(site: Path) -> list[dict[str, Any]]:
    """Every class visualization of a built site (gallery.json) with its target's rank under the
    gallery's other models: whether the pictures show their class."""
    cells = json.loads((site / "gallery.json").read_text())["cells"]
    return [{"model": c["model_id"], "row": c["technique_id"], "image": c["image_id"], "target": c["target_label"],
             "ranks": {k.removeprefix("rank under "): v for k, v in c["metrics"].items() if k.startswith("rank under ")}}
            for c in cells if any(k.startswith("rank under ") for k in c.get("metrics", {}))]


def run(passes: int, threads: int | None, keep: Path | None = None) -> dict[str, Any]:
    """The floor (``passes`` passes: half before the build, half after) and the cold build of the
    default gallery: seconds, the build's stages, and the build in passes of the floor, by wall
    time (the measure on an idle machine) and by CPU time (steadier when others share the CPU);
    the class visualizations' transfer ranks. ``keep``: a folder the built site is copied to."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    first = passes // 2
    before, cpu_before = passes_seconds(first)
    with tempfile.TemporaryDirectory(prefix="galleryvis-bench-") as tmp:
        c0 = _children_cpu()
        build = build_once(Path(tmp), None, env)
        build["cpu"] = _children_cpu() - c0
        site = Path(tmp) / "site"
        build["transfer"] = transfer_ranks(site) if not build["rc"] else []
        if keep is not None and site.is_dir():
            shutil.copytree(site, keep, dirs_exist_ok=True)
    after, cpu_after = passes_seconds(passes - first)
    per_pass, cpu_per_pass = (before + after) / passes, (cpu_before + cpu_after) / passes
    return {"passes": passes, "pass_before": before / first, "pass_after": after / (passes - first),
            "pass": per_pass, "pass_cpu": cpu_per_pass, "floor": per_pass * PASSES, "build": build,
            "ratio": build["wall"] / per_pass, "ratio_cpu": build["cpu"] / cpu_per_pass}
