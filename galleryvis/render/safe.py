"""Safe text for pages: site-relative URLs, Markdown escaping, and Markdown -> HTML with raw HTML
off, unsafe links dropped and headings shifted."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote, urlsplit

import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor
from markupsafe import Markup



_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~&$])")


def site_url(path: str) -> str:
    """A site-relative record path as a percent-encoded relative URL.

    ``"img/input/Café au lait.png"`` -> ``"img/input/Caf%C3%A9%20au%20lait.png"``. Every
    character but letters, digits, ``_.-~`` and ``/`` is encoded, so the result is safe in
    an HTML attribute and as a Markdown link target, and never reads as a scheme.

    Raises:
        ValueError: an empty or absolute path, NUL, or an empty, ``.`` or ``..`` component.
    """
    if not path or "\0" in path or path.startswith("/"):
        raise ValueError(f"not a site-relative path: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"path {path!r} has an empty, '.' or '..' component")
    return quote(path, safe="/")


def md_escape(text: Any) -> str:
    """``text`` on one line with Markdown's special characters backslash-escaped.

    Escapes ``\\ ` * _ [ ] < > # | ~ & $`` so names show literally on GitHub, also inside
    table cells and link text (``|`` no longer splits a cell, ``<script>`` is text). With
    ``[`` and ``]`` escaped, ``(``, ``)`` and ``!`` cannot start a link and stay as they are.
    """
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")


_CODE_SPAN = re.compile(r"(`+)(?:.*?[^`])?\1(?!`)")


_RAW_TAG = re.compile(r"<(?=[A-Za-z/!?])(?!(?:https?|mailto):)")


_ATX = re.compile(r"^( {0,3})(#{1,6})(?=\s|$)")


def embed_markdown(text: str, shift: int = 1) -> str:
    """Authored Markdown made safe to embed in ``gallery.md``: raw HTML tags shown as text
    (``<script>`` -> ``&lt;script>``, autolinks kept), ATX headings moved ``shift`` levels
    down; fenced code blocks and code spans are left as they are."""
    out, fence = [], ""
    for line in (text or "").strip().splitlines():
        m = _FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = ""
            out.append(line)
            continue
        if m:
            fence = m.group(1)
            out.append(line)
            continue
        pieces, last = [], 0
        for span in _CODE_SPAN.finditer(line):
            pieces.append(_RAW_TAG.sub("&lt;", line[last:span.start()]))
            pieces.append(span.group(0))
            last = span.end()
        pieces.append(_RAW_TAG.sub("&lt;", line[last:]))
        line = "".join(pieces)
        line = _ATX.sub(lambda h: h.group(1) + "#" * min(6, len(h.group(2)) + shift), line)
        out.append(line)
    return "\n".join(out)


class _SafeTree(Treeprocessor):
    def __init__(self, md: markdown.Markdown, shift: int) -> None:
        super().__init__(md)
        self.shift = shift

    def run(self, root: ET.Element) -> None:
        for parent in list(root.iter()):
            for i, el in enumerate(list(parent)):
                if el.tag == "img":
                    src = el.get("src", "")
                    if urlsplit(src).scheme or src.startswith("/"):
                        # No external images: a link to it instead.
                        link = ET.Element("a", {"href": src} if _safe_href(src) else {})
                        link.text = el.get("alt") or src
                        link.tail = el.tail
                        parent[i] = link
                elif el.tag == "a" and not _safe_href(el.get("href", "")):
                    el.tag = "span"  # a javascript: or data: link keeps only its text
                    el.attrib.clear()
                elif re.fullmatch(r"h[1-6]", el.tag):
                    el.tag = f"h{min(6, int(el.tag[1]) + self.shift)}"


def _safe_href(href: str) -> bool:
    return urlsplit(href.strip()).scheme.lower() in ("", "http", "https", "mailto")


class _SafeMarkdown(Extension):
    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def extendMarkdown(self, md: markdown.Markdown) -> None:  # noqa: N802 (markdown's API)
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        md.treeprocessors.register(_SafeTree(md, self.shift), "galleryvis_safe", 1)


def render_markdown(text: str, shift: int = 1) -> Markup:
    """Markdown as HTML: tables and fenced code on, raw HTML shown as text, ``javascript:``
    links and external images dropped, headings moved ``shift`` levels down."""
    md = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists", _SafeMarkdown(shift)])
    return Markup(md.convert(text or ""))


class MdSafe(str):
    """Markdown that is already escaped (the Markdown environment's ``Markup``)."""


def md_finalize(value: Any) -> str:
    """The Markdown environment's finalize: every value escaped unless built as :class:`MdSafe`."""
    return value if isinstance(value, MdSafe) else md_escape(value)
