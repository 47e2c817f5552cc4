"""Content-addressed cache of raw maps: ``<key>.npy`` plus ``<key>.json`` metadata with a checksum.

Entries are written to a temporary file and renamed, the metadata last, so a killed build
never leaves an entry that looks complete. A corrupt or truncated entry is reported and
treated as missing.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .fileio import atomic_write

import numpy as np

#: Bump when a change to the package changes what any cached entry would contain.
CACHE_VERSION = 2
#: The cache's folder name, beside the manifest (or in the current folder) unless given.
CACHE_DIRNAME = ".galleryvis-cache"


class CacheWarning(UserWarning):
    """A cache entry was unreadable and will be recomputed."""


def cache_key(**parts: Any) -> str:
    """sha256 of the canonical JSON of everything that determines an output."""
    blob = json.dumps({**parts, "cache_version": CACHE_VERSION}, sort_keys=True, default=_jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot put {type(value).__name__} in a cache key")


@dataclass
class Entry:
    """A cached array with its metadata."""

    array: np.ndarray
    meta: dict[str, Any]


class Cache:
    """A folder of entries; ``enabled=False`` stores nothing and finds nothing."""

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.used: set[str] = set()  # every key asked for or stored: what a build depends on

    def paths(self, key: str) -> tuple[Path, Path]:
        """The entry's array and metadata files."""
        self.used.add(key)
        folder = self.root / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    def has(self, key: str) -> bool:
        """Whether a complete entry exists (cheap: no checksum)."""
        npy, meta = self.paths(key)
        return self.enabled and npy.is_file() and meta.is_file()

    def get(self, key: str) -> Entry | None:
        """The entry, or None when absent or corrupt (corrupt: a CacheWarning, then recomputed)."""
        if not self.enabled:
            return None
        npy, meta_path = self.paths(key)
        if not (npy.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            blob = npy.read_bytes()
            if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            array = np.load(io.BytesIO(blob), allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"cache entry {npy} is corrupt ({exc}); recomputing", CacheWarning, stacklevel=2)
            return None
        return Entry(array, meta["meta"])

    def put(self, key: str, array: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        """Store ``array`` (losslessly) and its metadata, atomically, metadata last."""
        if not self.enabled:
            return
        npy, meta_path = self.paths(key)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        blob = buf.getvalue()
        atomic_write(npy, blob, durable=True)
        record = {"sha256": hashlib.sha256(blob).hexdigest(), "meta": meta or {}}
        atomic_write(meta_path, json.dumps(record, sort_keys=True, default=_jsonable).encode(), durable=True)

    def keys(self) -> list[str]:
        """Every complete entry's key."""
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("??/*.json"))

    def size(self) -> int:
        """Bytes used by the cache folder."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0

    def clean(self, keep: Iterable[str] | None = None) -> int:
        """Remove every entry (or every entry not in ``keep``); returns how many were removed."""
        if not self.root.is_dir():
            return 0
        if keep is None:
            n = len(self.keys())
            shutil.rmtree(self.root)
            return n
        keep = set(keep)
        removed = 0
        for key in self.keys():
            if key not in keep:
                for p in self.paths(key):
                    p.unlink(missing_ok=True)
                removed += 1
        return removed
