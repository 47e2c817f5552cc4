"""Files: the one way galleryvis writes one (readers see the old file or the new one, never
half), the one way it hashes one, and the refusal of URLs where a local path is meant.
Imports nothing heavy, so the build stamp and the command line can use it."""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")


def atomic_write(path: Path, data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` (folders created) through a temporary file in the same folder
    and ``os.replace``; the file is world-readable (0644), as a published site needs.
    ``durable``: fsync before the rename (cache entries), so a crash never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB blocks (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def url_scheme(text: str) -> str:
    """The scheme of a URL (``"s3"`` for ``s3://bucket/x``), '' for a local path."""
    found = _URL.match(text)
    return found.group(1).lower() if found else ""


def url_problem(text: str) -> str:
    """Why ``text`` cannot be a local path ('' when it can): a URL (``s3://bucket/x``), which
    a path would turn into a folder named ``s3:``. Only the cache may be remote (:mod:`.cache`)."""
    found = _URL.match(text)
    if found is None:
        return ""
    return (f"{text!r} is a URL ({found.group(1)}://); galleryvis reads and writes local paths only, "
            "for now")
