"""An unchanged rebuild is instant: the build stamp answers it without importing torch, and any
change to what the build read (manifest, images, cache entries, the site) rebuilds."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"
MANIFEST = """
[[images]]
path = "photos/*.png"

[[models]]
name = "resnet18"
weights = "none"
size = 64

[[techniques]]
name = "vanilla"
"""


def galleryvis(project: Path, *args: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + ["-m", "galleryvis", "build", *args]
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stamped")
    (root / "photos").mkdir()
    shutil.copy(PHOTOS / "cat.png", root / "photos" / "cat.png")
    (root / "galleryvis.toml").write_text(MANIFEST)
    first = galleryvis(root)
    assert "1 computed" in first.stdout
    return root


def imported_modules(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_an_unchanged_rebuild_imports_no_torch_and_says_so(project: Path) -> None:
    proc = galleryvis(project, importtime=True)
    assert "0 computed, 1 cached, 0 failed (unchanged since the last build)" in proc.stdout
    modules = imported_modules(proc.stderr)
    assert "galleryvis.cli" in modules and not any(m == "torch" or m.startswith("torch.") for m in modules)


def test_changes_to_what_the_build_read_rebuild(project: Path) -> None:
    cat = project / "photos" / "cat.png"
    os.utime(cat, ns=(1, 1))  # touched, same bytes: still unchanged
    assert "unchanged" in galleryvis(project).stdout
    shutil.copy(PHOTOS / "coffee.png", project / "photos" / "coffee.png")  # the glob now finds two
    assert "1 computed, 1 cached" in galleryvis(project).stdout
    with Image.open(cat) as im:  # new pixels under an old name
        im = im.convert("RGB")
        im.putpixel((0, 0), (255, 0, 0))
        im.save(cat)
    assert "1 computed, 1 cached" in galleryvis(project).stdout
    assert "unchanged" in galleryvis(project).stdout


@pytest.mark.slow
def test_a_missing_cache_entry_or_site_rebuilds_and_force_never_trusts_the_stamp(project: Path) -> None:
    assert "unchanged" in galleryvis(project).stdout
    entry = next(p for p in (project / ".galleryvis-cache").glob("??/*.npy"))
    entry.unlink()
    assert "unchanged" not in galleryvis(project).stdout
    (project / "site" / "build.json").write_text("{}")
    assert "unchanged" not in galleryvis(project).stdout
    assert "unchanged" not in galleryvis(project, "--force").stdout
    manifest = project / "galleryvis.toml"
    manifest.write_text(MANIFEST.replace('name = "vanilla"', 'name = "gradcam"'))
    assert "computed" in galleryvis(project).stdout and "unchanged" not in galleryvis(project, "--dry-run").stdout
