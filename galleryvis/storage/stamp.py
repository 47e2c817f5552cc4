"""Build stamps: an unchanged rebuild finishes without importing torch, as make does.

After a build with no failed cell, :func:`write` records in the cache folder everything the
build read: the manifest's bytes, every file it depended on (images, weights, labels, plugin
and factory modules; size and mtime, with a sha256 to tell a touched file from a changed
one), the folders whose listing a glob read, the cache entries the site was made from, the
site's own ``build.json``, galleryvis's files and the versions of the packages that shape the
output. :func:`fresh` checks all of that with ``os.stat`` and hashes only; it imports neither
torch nor the manifest parser, so it is what ``galleryvis build`` asks first.

A stamp is never used with ``--force``, ``--no-cache`` or ``--dry-run``, and never written for
a manifest with a factory model that has no weights file: its weights can change with files
the manifest does not name, so only building it (and hashing its state) tells.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable

from galleryvis.storage.fileio import atomic_write, sha256_of

#: Packages whose version is part of the stamp: they shape the maps, pictures or pages.
PACKAGES = ("galleryvis", "torch", "torchvision", "numpy", "pillow", "jinja2", "markdown", "cmap")
_FORMAT = 1


def _file(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime": st.st_mtime_ns, "sha": sha256_of(path)}


def _same_file(rec: dict[str, Any]) -> bool:
    try:
        st = os.stat(rec["path"])
        if st.st_size != rec["size"]:
            return False
        return st.st_mtime_ns == rec["mtime"] or sha256_of(rec["path"]) == rec["sha"]
    except OSError:
        return False


def _dir(path: Path) -> dict[str, Any]:
    return {"path": str(path), "names": sorted(os.listdir(path))}


def _same_dir(rec: dict[str, Any]) -> bool:
    try:
        return sorted(os.listdir(rec["path"])) == rec["names"]
    except OSError:
        return False


def _environment() -> dict[str, Any]:
    """What else shapes a build: package versions, galleryvis's own files, the machine."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    own = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for root in _own_folders()
                 for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    plugins = sorted(f"{ep.name}={ep.value}" for ep in importlib.metadata.entry_points(group="galleryvis.plugins"))
    return {"format": _FORMAT, "versions": versions, "python": sys.version, "machine": platform.node(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "galleryvis_files": hashlib.sha256(json.dumps(own).encode()).hexdigest(), "entry_points": plugins}


def _own_folders() -> list[Path]:
    """galleryvis's code and its templates (a separate folder in a source checkout)."""
    import importlib.resources

    folders = [Path(__file__).resolve().parents[1]]
    try:
        templates = Path(str(importlib.resources.files("galleryvis.templates")))
    except ModuleNotFoundError:  # an uninstalled source checkout
        templates = folders[0].parent / "templates"
    if not templates.is_relative_to(folders[0]):
        folders.append(templates)
    return folders


def options(cache_root: Path, batch_size: int | None) -> dict[str, Any]:
    """The build options a stamp depends on."""
    return {"cache": str(Path(cache_root).resolve()), "batch_size": batch_size}


def path_for(cache_root: Path, manifest: Path | None) -> Path:
    """Where the stamp of ``manifest`` (None: the embedded default, built here) lives."""
    ident = str(manifest.resolve()) if manifest is not None else f"default:{Path.cwd().resolve()}"
    return cache_root / "stamps" / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json"


def write(stamp: Path, *, manifest: Path | None, options: dict[str, Any], files: Iterable[Path],
          dirs: Iterable[Path], entries: Iterable[Path], output: Path, summary: str) -> None:
    """Record a finished build (see the module docstring); ``summary`` is the line to repeat."""
    record = {
        "environment": _environment(),
        "manifest": _file(manifest.resolve()) if manifest is not None else None,
        "options": options,
        "files": [_file(p) for p in sorted(set(files))],
        "dirs": [_dir(p) for p in sorted(set(dirs))],
        "entries": sorted(str(p) for p in set(entries)),
        "output": str(output),
        "site": _file(output / "build.json"),
        "summary": summary,
    }
    atomic_write(stamp, json.dumps(record, indent=1).encode())


def fresh(stamp: Path, *, manifest: Path | None, options: dict[str, Any]) -> dict[str, Any] | None:
    """The stamp's record when nothing it lists has changed since it was written, else None."""
    try:
        record = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        if record["options"] != options or record["environment"] != _environment():
            return None
        if (record["manifest"] is None) != (manifest is None):
            return None
        if manifest is not None and (record["manifest"]["path"] != str(manifest.resolve())
                                     or not _same_file(record["manifest"])):
            return None
        if not all(_same_file(f) for f in record["files"]) or not all(_same_dir(d) for d in record["dirs"]):
            return None
        if not all(os.path.isfile(e) for e in record["entries"]) or not _same_file(record["site"]):
            return None
    except (KeyError, TypeError):
        return None
    return record
