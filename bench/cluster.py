"""A gallery built locally and on a local Ray cluster (issue 16: overhead on one machine at most
15 %), and the Ray build's throughput with 1 and 2 worker processes.

Every build runs ``galleryvis build`` as a subprocess with a cache of its own (so each computes
every cell and stores it, as a cold build does). The Ray builds connect to one cluster started
here for the section (one node with every core), so Ray's own start-up is reported apart from
the builds; each build still pays for connecting and for its workers loading the model. One
worker asks for every core (the local build's torch threads), two workers half each.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .rebuild import build_once, small_manifest

TECHNIQUES = {"quick": ["vanilla", "gradcam"], "full": ["vanilla", "grad_x_image", "gradcam", "layercam",
                                                        "guided_backprop", "smoothgrad", "integrated_gradients"]}


def _cells(result: dict[str, Any]) -> int:
    summary = result.get("summary", {})
    return int(summary.get("computed", 0)) + int(summary.get("cached", 0))


def run(mode: str, manifest_arg: str | None, images: int | None, batch_size: int) -> dict[str, Any]:
    """Local build, Ray build with 1 and with 2 workers (seconds, cells, cells/s), Ray start-up;
    every build with ``batch_size`` (a Ray task is a chunk of that many images per model)."""
    import time

    from galleryvis.build.cluster import local_cluster

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="galleryvis-bench-") as tmp:
        folder = Path(tmp)
        if manifest_arg == "default":
            manifest, what = None, "the default gallery (embedded manifest)"
        elif manifest_arg:
            manifest, what = Path(manifest_arg).resolve(), manifest_arg
        else:
            n_img = images or (1 if mode == "quick" else 2)
            techs = TECHNIQUES[mode]
            manifest = small_manifest(folder, n_img, techs, "cpu")
            what = f"{n_img} image(s) x efficientnet_lite0 x {len(techs)} techniques ({', '.join(techs)})"
        root = str(Path(__file__).resolve().parent.parent)  # this checkout, for the builds and their workers
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        out: dict[str, Any] = {"what": what, "cores": cores, "batch_size": batch_size}
        out["local"] = build_once(folder, manifest, env, "local", ["--batch-size", str(batch_size)])
        t0 = time.perf_counter()
        with local_cluster(folder / "ray", nodes=1, cpus=cores) as cluster:
            out["ray_start"] = time.perf_counter() - t0
            env.update(cluster.env)
            for workers in (1, 2):
                args = ["--batch-size", str(batch_size), "--executor", "ray", "--ray-address", cluster.address,
                        "--ray-workers", str(workers), "--num-cpus", str(max(1, cores // workers))]
                out[f"ray{workers}"] = build_once(folder, manifest, env, f"ray{workers}", args)
    for name in ("local", "ray1", "ray2"):
        r = out[name]
        r["cells"] = _cells(r)
        r["cells_per_s"] = r["cells"] / r["wall"] if r["wall"] else 0.0
    out["overhead"] = out["ray1"]["wall"] / out["local"]["wall"] - 1 if out["local"]["wall"] else None
    return out

