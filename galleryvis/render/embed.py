"""``galleryvis embed``: a gallery table between two marker lines of a Markdown file.

A section is the text between the lines ``<!-- galleryvis:NAME -->`` and
``<!-- /galleryvis:NAME -->``. Markers stand on lines of their own; inside fenced code blocks
they are text. :func:`sections` validates every section of a file (balanced, not nested, one
of each name) and :func:`replace` swaps one section's content, leaving every other byte as it
was (line endings included). Text functions, no torch; only :func:`read` and :func:`embed`
touch the file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from galleryvis.errors import EmbedError
from galleryvis.storage.fileio import atomic_write

DEFAULT_SECTION = "gallery"

_NAME = r"[\w.-]+"
_MARKER = re.compile(rf"<!--\s*(/?)galleryvis:({_NAME})\s*-->")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


@dataclass(frozen=True)
class Section:
    """A marked section: ``start``/``end`` are offsets of its content (after the open marker's
    line, at the close marker's line), ``line`` the open marker's line number, ``newline`` its
    line ending."""

    name: str
    line: int
    start: int
    end: int
    newline: str


def _lines(text: str) -> list[str]:
    """``text`` split after each ``\\n`` (``\\r`` stays with its line)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def sections(text: str, file: str | os.PathLike[str]) -> dict[str, Section]:
    """Every section of ``text`` by name.

    Raises:
        EmbedError: ``FILE:LINE: ...`` for a close marker without its open one, an open marker
            inside an open section (of any name), a section opened twice, or one never closed.
    """
    found: dict[str, Section] = {}
    pending: tuple[str, int, int, str] | None = None  # name, line, content start, newline
    fence, offset = "", 0
    for number, line in enumerate(_lines(text), 1):
        body = line.rstrip("\r\n")
        start, offset = offset, offset + len(line)
        f = _FENCE.match(body)
        if fence:
            if f and f.group(1)[0] == fence[0] and len(f.group(1)) >= len(fence) and not body[f.end():].strip():
                fence = ""
            continue
        if f:
            fence = f.group(1)
            continue
        m = _MARKER.fullmatch(body.strip())
        if m is None:
            continue
        closing, name = m.group(1) == "/", m.group(2)
        where = f"{file}:{number}"
        if closing:
            if pending is None:
                raise EmbedError(f"{where}: '<!-- /galleryvis:{name} -->' closes a section that was never opened")
            if pending[0] != name:
                raise EmbedError(f"{where}: '<!-- /galleryvis:{name} -->' inside section '{pending[0]}' "
                                 f"(opened on line {pending[1]}); sections cannot nest or overlap")
            found[name] = Section(name, pending[1], pending[2], start, pending[3])
            pending = None
        elif pending is not None:
            raise EmbedError(f"{where}: section '{name}' opens inside section '{pending[0]}' "
                             f"(opened on line {pending[1]}); sections cannot nest")
        elif name in found:
            raise EmbedError(f"{where}: a second section '{name}' (the first opens on line {found[name].line})")
        else:
            pending = (name, number, offset, line[len(body):])
    if pending is not None:
        raise EmbedError(f"{file}:{pending[1]}: section '{pending[0]}' is never closed "
                         f"(no '<!-- /galleryvis:{pending[0]} -->' line after it)")
    return found


def section(text: str, name: str, file: str | os.PathLike[str]) -> Section:
    """Section ``name`` of ``text``, once every section is checked.

    Raises:
        EmbedError: a name a marker cannot hold, any problem :func:`sections` finds, or no
            section ``name``.
    """
    if not re.fullmatch(_NAME, name):
        raise EmbedError(f"section name {name!r}: use letters, digits, '_', '.' and '-'")
    found = sections(text, file)
    if name not in found:
        raise EmbedError(f"{file}: no section '{name}': mark it with the lines "
                         f"'<!-- galleryvis:{name} -->' and '<!-- /galleryvis:{name} -->'")
    return found[name]


def replace(text: str, name: str, content: str, file: str | os.PathLike[str]) -> str:
    """``text`` with section ``name``'s content replaced by a blank line, ``content`` (its
    ``\\n`` written as the open marker's line ending) and a blank line; raises as :func:`section`."""
    s = section(text, name, file)
    body = s.newline + content.strip("\n").replace("\n", s.newline) + s.newline * 2
    return text[: s.start] + body + text[s.end:]


def read(file: Path) -> str:
    """``file`` as UTF-8 text, exactly (no newline translation).

    Raises:
        EmbedError: the bytes are not UTF-8.
    """
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EmbedError(f"{file}: not UTF-8 text (byte {exc.start})") from None


def site_prefix(file: Path, site: Path) -> str:
    """The URL prefix from ``file``'s folder to the ``site`` folder (``"site/"``,
    ``"../site/"``), posix separators, percent-encoded.

    Raises:
        EmbedError: ``file`` is inside ``site``, which every build replaces whole.
    """
    target, folder = file.resolve(), site.resolve()
    if target.is_relative_to(folder):
        raise EmbedError(f"{file}: inside the site folder {site}, which every build replaces; "
                         "embed into a file outside it")
    return quote(Path(os.path.relpath(folder, target.parent)).as_posix(), safe="/") + "/"


def embed(file: Path, name: str, table: str) -> bool:
    """Write ``table`` (Markdown) into section ``name`` of ``file`` when it differs from what is
    there: atomically, through a symbolic link to its target, keeping the file's mode; True when
    ``file`` changed. ``file`` stays untouched on any error."""
    text = read(file)
    new = replace(text, name, table, file)
    if new == text:
        return False
    target = file.resolve()
    mode = target.stat().st_mode & 0o7777
    atomic_write(target, new.encode("utf-8"))
    os.chmod(target, mode)
    return True
