"""Content-addressed cache of raw maps: ``<key>.npy`` plus ``<key>.json`` metadata with a checksum.

The cache lives in a local folder or at an fsspec URL (``s3://bucket/prefix``, ``gs://...``,
``memory://`` for tests; ``file://`` is a local folder). The guarantees are the same on both:
the array is written first and its metadata (with the array's sha256) last, and a reader
verifies the checksum, so a torn, killed or concurrent write never yields an entry that reads
as valid; it is reported and treated as missing. Locally each file is also written to a
temporary name, fsynced and renamed; an object store's PUT is atomic by itself. Two builds
writing one key write the same content (the key covers everything that decides it), and any
interleaving of their two files fails the checksum rather than mixing them.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

from galleryvis.storage.fileio import atomic_write, url_scheme

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


def location_problem(location: str) -> str:
    """Why ``location`` cannot hold a cache ('' when it can): a URL whose scheme fsspec does
    not know, or whose filesystem package is not installed (``gs://`` without gcsfs)."""
    scheme = url_scheme(location)
    if not scheme or scheme == "file":
        return ""
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as exc:
        return f"{location!r}: {str(exc).strip().splitlines()[0]}"
    return ""


@dataclass
class Entry:
    """A cached array with its metadata."""

    array: np.ndarray
    meta: dict[str, Any]


class _Store(Protocol):
    """Where entries' files live, by name relative to the cache (``ab/<key>.npy``)."""

    def read(self, name: str) -> bytes | None: ...
    def write(self, name: str, data: bytes) -> None: ...
    def exists(self, name: str) -> bool: ...
    def names(self, pattern: str) -> list[str]: ...
    def remove(self, names: list[str]) -> None: ...
    def remove_all(self) -> None: ...
    def size(self) -> int: ...


class _Folder:
    """A local folder: atomic, durable writes (temporary file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        atomic_write(self.root / name, data, durable=True)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def names(self, pattern: str) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.root.glob(pattern)] if self.root.is_dir() else []

    def remove(self, names: list[str]) -> None:
        for name in names:
            (self.root / name).unlink(missing_ok=True)

    def remove_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0


class _Remote:
    """An fsspec filesystem under a base path; each file is one whole-object write."""

    def __init__(self, url: str) -> None:
        import fsspec

        self.fs, self.base = fsspec.core.url_to_fs(url)
        self.base = self.base.rstrip("/")

    def read(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(f"{self.base}/{name}")
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.base}/{name}", data)

    def exists(self, name: str) -> bool:
        return self.fs.exists(f"{self.base}/{name}")

    def names(self, pattern: str) -> list[str]:
        return [path[len(self.base) + 1:] for path in self.fs.glob(f"{self.base}/{pattern}")]

    def remove(self, names: list[str]) -> None:
        if names:
            self.fs.rm([f"{self.base}/{name}" for name in names])

    def remove_all(self) -> None:
        if self.fs.exists(self.base):
            self.fs.rm(self.base, recursive=True)

    def size(self) -> int:
        return int(self.fs.du(self.base)) if self.fs.exists(self.base) else 0


class Cache:
    """Entries in a local folder or at an fsspec URL (see the module docstring); ``enabled=False``
    stores nothing and finds nothing. ``root`` is the local folder, None for a URL.
    It pickles (as its location), so that cluster workers write to the same cache."""

    def __init__(self, location: str | Path, enabled: bool = True) -> None:
        self.location = str(location)
        self.enabled = enabled
        self.used: set[str] = set()  # every key asked for or stored: what a build depends on
        scheme = url_scheme(self.location)
        self.root: Path | None = None if scheme and scheme != "file" else Path(self.location.removeprefix("file://"))
        self._store: _Store = _Folder(self.root) if self.root is not None else _Remote(self.location)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Cache, (self.location, self.enabled))

    def names(self, key: str) -> tuple[str, str]:
        """The entry's array and metadata file names, relative to the cache."""
        self.used.add(key)
        return f"{key[:2]}/{key}.npy", f"{key[:2]}/{key}.json"

    def paths(self, key: str) -> tuple[Path, Path]:
        """The entry's array and metadata files (a local cache only)."""
        assert self.root is not None, "paths() of a cache at a URL"
        npy, meta = self.names(key)
        return self.root / npy, self.root / meta

    def has(self, key: str) -> bool:
        """Whether a complete entry exists (cheap: no checksum)."""
        return self.enabled and all(self._store.exists(name) for name in self.names(key))

    def get(self, key: str) -> Entry | None:
        """The entry, or None when absent or corrupt (corrupt: a CacheWarning, then recomputed)."""
        if not self.enabled:
            return None
        npy, meta_name = self.names(key)
        try:
            meta_blob, blob = self._store.read(meta_name), self._store.read(npy)
            if meta_blob is None or blob is None:
                return None
            meta = json.loads(meta_blob)
            if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            array = np.load(io.BytesIO(blob), allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            where = self.root / npy if self.root is not None else f"{self.location.rstrip('/')}/{npy}"
            warnings.warn(f"cache entry {where} is corrupt ({exc}); recomputing", CacheWarning, stacklevel=2)
            return None
        return Entry(array, meta["meta"])

    def put(self, key: str, array: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        """Store ``array`` (losslessly) and its metadata, metadata last."""
        if not self.enabled:
            return
        npy, meta_name = self.names(key)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        blob = buf.getvalue()
        self._store.write(npy, blob)
        record = {"sha256": hashlib.sha256(blob).hexdigest(), "meta": meta or {}}
        self._store.write(meta_name, json.dumps(record, sort_keys=True, default=_jsonable).encode())

    def keys(self) -> list[str]:
        """Every complete entry's key."""
        return sorted(Path(name).stem for name in self._store.names("??/*.json"))

    def size(self) -> int:
        """Bytes used by the cache."""
        return self._store.size()

    def clean(self, keep: Iterable[str] | None = None) -> int:
        """Remove every entry (or every entry not in ``keep``); returns how many were removed."""
        keys = self.keys()
        if keep is None:
            self._store.remove_all()
            return len(keys)
        kept = set(keep)
        gone = [key for key in keys if key not in kept]
        self._store.remove([name for key in gone for name in self.names(key)])
        return len(gone)
