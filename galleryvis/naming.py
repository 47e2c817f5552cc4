"""Safe output names: slugs for file and URL components, and a guard against leaving a folder."""
from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Iterable

#: Longest readable part of a slug; the whole slug stays far below any file-name limit.
MAX_READABLE = 48

_KEPT = re.compile(r"[A-Za-z0-9._\s-]*", re.ASCII)
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
# Device names Windows refuses as file names, whatever the extension.
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def slug(text: str) -> str:
    """A non-empty ASCII name component made of ``[a-z0-9-]``, deterministic for ``text``.

    Letters and digits are kept (lower-cased, accents transliterated), and every run of other
    characters becomes one ``-``: ``"Chelsea the cat.png"`` -> ``"chelsea-the-cat-png"``.
    When anything beyond case, spaces, ``.``, ``_`` and ``-`` is lost (non-ASCII letters,
    ``/``, ``\\``, ``<``, NUL, ... ), when the name is cut at :data:`MAX_READABLE` characters,
    or when it would be a Windows device name (``con``, ``nul``, ...), ``-`` and 8 hex digits
    of the text's SHA-256 are appended so distinct inputs stay distinct:
    ``"Café.png"`` -> ``"cafe-png-<hash>"``. Names that differ only in case or separators can
    still share a slug; :func:`unique_slugs` separates those.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    readable = _NON_ALNUM.sub("-", ascii_text.lower()).strip("-")
    lossy = not _KEPT.fullmatch(text) or readable in _RESERVED
    if len(readable) > MAX_READABLE:
        readable = readable[:MAX_READABLE].rstrip("-")
        lossy = True
    if not readable:
        return _short_hash(text)
    return f"{readable}-{_short_hash(text)}" if lossy else readable


def unique_slugs(names: Iterable[str]) -> list[str]:
    """:func:`slug` of each name, made distinct in order: the first keeps its slug and later
    repeats get ``-2``, ``-3``, ... (skipping any suffix another name already produces)."""
    slugs = [slug(n) for n in names]
    taken = set(slugs)
    seen: set[str] = set()
    out = []
    for s in slugs:
        unique = s
        if s in seen:
            n = 2
            while (unique := f"{s}-{n}") in taken:
                n += 1
        taken.add(unique)
        seen.add(s)
        out.append(unique)
    return out


def inside(root: Path, rel: str) -> Path:
    """``root / rel``, refusing any ``rel`` whose result would leave ``root``.

    ``..`` components, absolute paths and symlinks are resolved before the check; the result
    keeps ``root``'s spelling (``root / <resolved relative part>``).

    Raises:
        ValueError: ``rel`` contains NUL or the resolved path is outside ``root``.
    """
    if "\0" in rel:
        raise ValueError(f"path {rel!r} contains a NUL character")
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"path {rel!r} leaves the folder {str(root)!r}")
    return Path(root) / target.relative_to(base)
