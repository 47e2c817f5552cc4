"""Cold build vs unchanged rebuild of a gallery (issue 5: rebuild <= 5% of the cold build), and
the cold build with its shared passes switched off (``--no-shared-passes``; issue 17: sharing
at least halves the cost of the default gallery's cold build).

The builds run ``galleryvis build`` as a subprocess in a temporary folder with its own cache,
so the cold build really starts from an empty cache and both include interpreter start-up.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import IMAGES_DIR, IMAGE_SUFFIXES

SMALL_TECHNIQUES = {
    "quick": ["vanilla", "gradcam"],
    "full": ["vanilla", "grad_x_image", "gradcam", "layercam", "guided_backprop", "smoothgrad", "integrated_gradients"],
}


def small_manifest(folder: Path, images: int, techniques: list[str], device: str) -> Path:
    """A manifest of the first ``images`` bundled photos x EfficientNet-Lite0 x ``techniques``."""
    photos = sorted(p for p in IMAGES_DIR.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:images]
    (folder / "photos").mkdir()
    for p in photos:
        shutil.copy(p, folder / "photos" / p.name)
    lines = ['[gallery]', 'title = "bench"', f'device = "{device}"', '',
             '[[images]]', 'path = "photos/*"', '',
             '[[models]]', 'name = "efficientnet_lite0"', 'weights = "DEFAULT"', '']
    for t in techniques:
        lines += ['[[techniques]]', f'name = "{t}"', '']
    lines += ['[metrics]', 'enabled = false', '']
    path = folder / "galleryvis.toml"
    path.write_text("\n".join(lines))
    return path


def _command() -> list[str]:
    exe = Path(sys.executable).with_name("galleryvis")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from galleryvis.cli import main; main()"]


def build_once(folder: Path, manifest: Path | None, env: dict[str, str], cache: str = "cache",
               args: list[str] | None = None) -> dict[str, Any]:
    """``galleryvis build`` in a subprocess with the cache ``folder / cache`` and ``args``: its wall
    seconds, exit code, stderr's tail and build.json's summary."""
    cmd = _command() + ["build", "-q", "--cache-dir", str(folder / cache), *(args or [])]
    if manifest is not None:
        cmd.append(str(manifest))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"wall": wall, "rc": proc.returncode, "stderr": proc.stderr.strip()[-500:]}
    site = (manifest.parent if manifest is not None else folder) / "site" / "build.json"
    try:
        data = json.loads(site.read_text())
        out["build_seconds"] = data.get("summary", {}).get("total_seconds")
        out["summary"] = data.get("summary", {})
        out["stages"] = data.get("stages", {})
    except (OSError, ValueError):
        pass
    return out


def run(mode: str, manifest_arg: str | None, device: str, threads: int | None) -> dict[str, Any]:
    """Cold build, unchanged rebuild, cold build without shared passes and the interpreter +
    import floor, in seconds."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="galleryvis-bench-") as tmp:
        folder = Path(tmp)
        if manifest_arg == "default":
            manifest, what = None, "the default gallery (embedded manifest)"
        elif manifest_arg:
            manifest, what = Path(manifest_arg).resolve(), manifest_arg
        else:
            n_img = 1 if mode == "quick" else 4
            techs = SMALL_TECHNIQUES[mode]
            manifest = small_manifest(folder, n_img, techs, "cpu" if device == "cpu" else "auto")
            what = f"{n_img} image(s) x efficientnet_lite0 x {len(techs)} techniques ({', '.join(techs)})"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import galleryvis.cli, galleryvis.build.pipeline"], env=env, check=True)
        startup = time.perf_counter() - t0
        cold = build_once(folder, manifest, env)
        warm = build_once(folder, manifest, env)
        unshared = build_once(folder, manifest, env, "cache-unshared", ["--no-shared-passes"])
    return {"what": what, "startup": startup, "cold": cold, "warm": warm, "unshared": unshared}
