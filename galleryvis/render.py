"""Plain records in, a static site out: HTML pages, ``gallery.md``, ``style.css``, a favicon.

Rendering never computes: it reads :class:`~galleryvis.records.Gallery` (paths, labels,
scores) and writes text. The pictures are already in the output folder at the paths the
records give, relative to the site root; every page sits in that root, so those paths are
the links.

Pages (all relative links, no external scripts, fonts or stylesheets):

* ``index.html``: title, description, images, top-5 predictions, links to every view;
* ``model-<model>.html``: rows = techniques and their variants, columns = images;
* ``compare-<image>.html``: one image, rows = technique variants, columns = models;
* ``technique-<technique>.html``: its description and the grid across models and images;
* ``gallery.md``: the per-model tables in GitHub-flavoured Markdown.

Everything from the records is escaped (jinja2 autoescape for HTML, :func:`md_escape` for
Markdown), and the same records always give byte-identical files.
"""
from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlsplit

import jinja2
import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor
from markupsafe import Markup

from galleryvis.atomic import atomic_write
from galleryvis.naming import unique_slugs
from galleryvis.records import (
    Cell,
    Gallery,
    ImageRecord,
    ModelRecord,
    Ranking,
    TechniqueRecord,
    Variant,
)

#: A cell whose map keeps at least this rank correlation after the model's weights are
#: randomized is flagged (Adebayo et al. 2018); ``gallery.summary["sanity_threshold"]`` overrides.
SANITY_THRESHOLD = 0.5

#: Section titles of the technique families, in page order; others follow, title-cased.
FAMILY_TITLES = {"attribution": "Attribution maps", "synthesis": "Feature visualization"}

#: Display names of the metrics a cell may carry, in display order; ``hint`` is the tooltip.
METRICS = {
    "deletion_auc": ("Deletion AUC", "lower is better: the class probability drops fast as the top pixels are removed"),
    "insertion_auc": ("Insertion AUC", "higher is better: the class probability rises fast as the top pixels are inserted"),
    "sanity": ("Sanity ρ", "rank correlation with the map of a randomized model: high means the map ignores the weights"),
}

#: How a variant key turns into the seed's row labels; others give ``"<title> <Label>"``.
ROW_LABELS = {"color": "Colored {title}", "image": "{title}"}

_SMALL_WORDS = frozenset({"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to", "with"})
_URL = re.compile(r"https?://[^\s<>\"'|)\]]+")
_TECHNIQUE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~&$])")


# -- small pure helpers (tested directly) -----------------------------------------------------
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


def target_text(label: str, index: int | None) -> str:
    """``"Target class: Egyptian cat (285)"``; ``""`` when the cell has no target."""
    if index is None:
        return f"Target class: {label}" if label else ""
    return f"Target class: {label} ({index})" if label else f"Target class: {index}"


def _titlecase(text: str) -> str:
    words = text.split()
    return " ".join(
        w if (i and w.lower() in _SMALL_WORDS) or w[:1].isupper() else w[:1].upper() + w[1:]
        for i, w in enumerate(words)
    )


def row_label(title: str, variant: Variant | None) -> str:
    """The seed's row label of a technique variant.

    ``"Colored Vanilla Backpropagation"`` (key ``color``), ``"Vanilla Backpropagation
    Saliency"``, ``"Grad-CAM Heatmap on Image"``. A label containing ``{title}`` is used as
    a pattern: ``"Colored {title}"``.
    """
    if variant is None:
        return title
    pattern = variant.label if "{title}" in variant.label else ROW_LABELS.get(variant.key)
    if pattern is not None:
        return pattern.replace("{title}", title)
    return f"{title} {_titlecase(variant.label)}".strip()


def fmt_number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` decimals; ints, bools and strings as they are."""
    if isinstance(value, bool) or value is None:
        return "yes" if value else ("—" if value is None else "no")
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def split_paper(paper: str) -> tuple[str, str]:
    """``("Selvaraju et al. 2017", "https://arxiv.org/abs/1610.02391")`` from the record's text."""
    m = _URL.search(paper or "")
    if not m:
        return (paper or "").strip(), ""
    text = (paper[: m.start()] + paper[m.end():]).strip().strip(",;").strip()
    return text, m.group(0)


@dataclass(frozen=True)
class Sparkline:
    """An objective curve as SVG polyline points (numbers only) plus its summary."""

    points: str
    width: int
    height: int
    first: str
    last: str
    steps: int


def sparkline(trace: Iterable[float], width: int = 120, height: int = 30) -> Sparkline | None:
    """The curve of ``trace`` scaled into ``width`` x ``height``; None for fewer than 2 finite values."""
    values = [(i, float(v)) for i, v in enumerate(trace)]
    n = len(values)
    finite = [(i, v) for i, v in values if math.isfinite(v)]
    if len(finite) < 2:
        return None
    lo = min(v for _, v in finite)
    hi = max(v for _, v in finite)
    span = (hi - lo) or 1.0
    pts = " ".join(
        f"{1 + i * (width - 2) / (n - 1):.1f},{height - 1 - (v - lo) / span * (height - 2):.1f}"
        for i, v in finite
    )
    return Sparkline(pts, width, height, f"{finite[0][1]:.4g}", f"{finite[-1][1]:.4g}", n)


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


# -- Markdown -> HTML (raw HTML off, unsafe links dropped, headings shifted) ------------------
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


# -- the grid: one model of the tables that both HTML and Markdown draw -----------------------
@dataclass
class Column:
    """One grid column: a (model, image) pair with its header."""

    model: ModelRecord
    image: ImageRecord
    title: str
    href: str
    target: str = ""
    target_key: tuple[str, int | None] | None = None


@dataclass
class Slot:
    """One data cell of a grid row; ``kind`` is image, original, failed, missing, absent or spanned."""

    kind: str
    cell: Cell | None = None
    variant: Variant | None = None
    src: str = ""
    thumb: str = ""
    alt: str = ""
    rowspan: int = 1
    note: str = ""
    metrics: list[tuple[str, str, str, bool]] = field(default_factory=list)
    spark: Sparkline | None = None
    spark_label: str = ""
    plot: str = ""
    error: str = ""
    curves: list[tuple[str, Sparkline]] = field(default_factory=list)


@dataclass
class Row:
    """One grid row: a technique variant (or the original images) across the columns."""

    label: str
    slots: list[Slot]
    technique: TechniqueRecord | None = None
    href: str = ""
    sub: str = ""
    first: bool = False


@dataclass
class Table:
    """A grid: caption, column headers, rows."""

    caption: str
    corner: str
    columns: list[Column]
    rows: list[Row]


class _Site:
    """Page names and lookups for one gallery."""

    def __init__(self, gallery: Gallery) -> None:
        self.g = gallery
        self.models = {m.id: m for m in gallery.models}
        self.images = {i.id: i for i in gallery.images}
        self.techniques = {t.id: t for t in gallery.techniques}
        self.model_page = dict(zip(self.models, (f"model-{s}.html" for s in unique_slugs(self.models))))
        self.compare_page = dict(zip(self.images, (f"compare-{s}.html" for s in unique_slugs(self.images))))
        self.technique_page = dict(
            zip(self.techniques, (f"technique-{s}.html" for s in unique_slugs(self.techniques)))
        )
        threshold = gallery.summary.get("sanity_threshold", SANITY_THRESHOLD)
        self.sanity_threshold = float(threshold) if isinstance(threshold, (int, float)) else SANITY_THRESHOLD

    def families(self) -> list[tuple[str, list[TechniqueRecord]]]:
        """Techniques grouped by family: known families first, then the rest by first appearance."""
        groups: dict[str, list[TechniqueRecord]] = {}
        for t in self.g.techniques:
            groups.setdefault(t.family, []).append(t)
        order = [f for f in FAMILY_TITLES if f in groups] + [f for f in groups if f not in FAMILY_TITLES]
        return [(f, groups[f]) for f in order]

    # -- grids -------------------------------------------------------------------------------
    def column_target(self, model: ModelRecord, image: ImageRecord, techs: list[TechniqueRecord]) -> tuple[str, int | None] | None:
        """The most common class target of that model's cells on that image (first in row order
        on ties); cells whose unit is not a class (a channel) count only when no cell has one."""
        cells = [c for t in techs if (c := self.g.cell(model.id, image.id, t.id)) is not None]
        classes = Counter((c.target_label, c.target_index) for c in cells if c.target_index is not None)
        others = Counter((c.target_label, c.target_index) for c in cells if c.target_index is None and c.target_label)
        counts = classes or others
        return counts.most_common(1)[0][0] if counts else None

    def alt(self, tech: TechniqueRecord, variant: Variant, model: ModelRecord, image: ImageRecord, cell: Cell) -> str:
        if variant.alt:
            return variant.alt
        target = target_text(cell.target_label, cell.target_index)
        return (
            f"{tech.title}, {variant.label.replace('{title}', tech.title)}: model {model.name}, "
            f"image {image.name}" + (f", {target[0].lower()}{target[1:]}" if target else "")
        )

    def metrics(self, cell: Cell) -> list[tuple[str, str, str, bool]]:
        """``(name, value, hint, flagged)`` for each metric: known ones first, then sorted."""
        keys = [k for k in METRICS if k in cell.metrics] + sorted(k for k in cell.metrics if k not in METRICS)
        out = []
        for k in keys:
            name, hint = METRICS.get(k, (_titlecase(k.replace("_", " ")), ""))
            value = cell.metrics[k]
            flagged = (
                k.startswith("sanity")
                and isinstance(value, (int, float))
                and math.isfinite(value)
                and value >= self.sanity_threshold
            )
            if flagged:
                hint = f"{hint}; at or above {self.sanity_threshold:g}: flagged".lstrip("; ")
            out.append((name, fmt_number(value), hint, flagged))
        return out

    def grid(
        self,
        caption: str,
        corner: str,
        columns: list[Column],
        techs: list[TechniqueRecord],
        *,
        original: bool,
        sub_layer: bool,
        plots: bool = False,
    ) -> Table | None:
        """Rows = each technique's variants (union over the columns), one slot per column."""
        for col in columns:
            key = self.column_target(col.model, col.image, techs)
            col.target_key = key
            col.target = target_text(*key) if key else ""
        rows: list[Row] = []
        if original:
            rows.append(Row("Original Image", [
                Slot("original", src=col.image.src, thumb=col.image.thumb or col.image.src,
                     alt=f"Original image {col.image.name}")
                for col in columns
            ], first=True))
        for tech in techs:
            cells = [self.g.cell(col.model.id, col.image.id, tech.id) for col in columns]
            if all(c is None for c in cells):
                continue
            keys: dict[str, Variant] = {}
            for c in cells:
                for v in c.variants if c is not None and c.status == "ok" else ():
                    keys.setdefault(v.key, v)
            variants: list[Variant | None] = list(keys.values()) or [None]
            layers = sorted({col.model.layers[tech.id] for col in columns if tech.id in col.model.layers})
            sub = tech.name + (f" · layer {', '.join(layers)}" if sub_layer and layers else "")
            group = [
                Row(row_label(tech.title, v), [], tech, self.technique_page[tech.id], sub, first=j == 0)
                for j, v in enumerate(variants)
            ]
            for col, cell in zip(columns, cells):
                for j, (row, v) in enumerate(zip(group, variants)):
                    row.slots.append(self.slot(col, tech, cell, v, j, len(variants), plots))
            rows.extend(group)
        if len(rows) == int(original):
            return None
        return Table(caption, corner, columns, rows)

    def slot(self, col: Column, tech: TechniqueRecord, cell: Cell | None, v: Variant | None,
             j: int, span: int, plots: bool) -> Slot:
        if cell is None or cell.status != "ok":
            if j:
                return Slot("spanned", cell)
            if cell is None:
                return Slot("missing", rowspan=span)
            return Slot("failed", cell, rowspan=span, error=cell.error or "failed (no message)")
        found = next((x for x in cell.variants if v is not None and x.key == v.key), None)
        slot = Slot("absent", cell) if found is None else Slot(
            "image", cell, found, found.src, found.thumb or found.src,
            self.alt(tech, found, col.model, col.image, cell),
        )
        if j == 0:
            if (cell.target_label, cell.target_index) != col.target_key and (cell.target_label or cell.target_index is not None):
                slot.note = target_text(cell.target_label, cell.target_index)
            slot.metrics = self.metrics(cell)
            slot.spark = sparkline(cell.trace)
            slot.spark_label = (
                f"Objective per step of {tech.title}, model {col.model.name}, image {col.image.name}"
            )
            slot.plot = cell.plot if plots else ""
            if plots:
                slot.curves = [(name, sp) for name, values in sorted(cell.curves.items())
                               if (sp := sparkline(values)) is not None]
        return slot

    def _family_tables(self, subject: str, columns: Callable[[], list[Column]], noun: str,
                       per_model: bool) -> list[tuple[str, Table]]:
        """One grid per technique family (fresh columns each: a grid sets their targets); a
        model's page also shows the original images and each technique's layer."""
        out = []
        for family, techs in self.families():
            title = FAMILY_TITLES.get(family, _titlecase(family.replace("_", " ")))
            table = self.grid(f"{subject}: {title.lower()}; rows are techniques and their variants, "
                              f"columns are {noun}", "Technique", columns(), techs,
                              original=per_model, sub_layer=per_model)
            if table:
                out.append((title, table))
        return out

    def model_tables(self, model: ModelRecord) -> list[tuple[str, Table]]:
        return self._family_tables(
            model.name, lambda: [Column(model, img, img.name, self.compare_page[img.id]) for img in self.g.images],
            "images", True)

    def compare_tables(self, image: ImageRecord) -> list[tuple[str, Table]]:
        return self._family_tables(
            image.name, lambda: [Column(m, image, m.name, self.model_page[m.id]) for m in self.g.models],
            "models", False)

    def technique_tables(self, tech: TechniqueRecord) -> list[tuple[ModelRecord, Table]]:
        out = []
        for model in self.g.models:
            cols = [Column(model, img, img.name, self.compare_page[img.id]) for img in self.g.images]
            table = self.grid(f"{tech.title} on {model.name}; rows are variants, columns are images",
                              "Variant", cols, [tech], original=True, sub_layer=True, plots=True)
            if table:
                out.append((model, table))
        return out

    def failures(self) -> list[tuple[Cell, str]]:
        return [(c, self.model_page.get(c.model_id, "")) for c in self.g.cells if c.status != "ok"]

    def name(self, kind: str, id_: str) -> str:
        table = {"model": self.models, "image": self.images, "technique": self.techniques}[kind]
        rec = table.get(id_)
        return id_ if rec is None else getattr(rec, "title", None) or rec.name

    def ranking(self, r: Ranking) -> tuple[list[str], list[str], list[tuple[bool, list[tuple[str, str]]]]]:
        """Headers, keys and rows ``(is_baseline, [(text, href)])`` of a ranking table."""
        keys: list[str] = []
        for row in r.rows:
            keys.extend(k for k in row if k not in keys)
        headers = [METRICS[k][0] if k in METRICS else _titlecase(k.replace("_", " ")) for k in keys]
        rows = []
        for row in r.rows:
            cells = []
            for k in keys:
                v = row.get(k)
                href = self.technique_page.get(v, "") if isinstance(v, str) and k in ("technique", "technique_id", "id") else ""
                cells.append((fmt_number(v) if not isinstance(v, str) else v, href))
            rows.append((bool(row.get("baseline")), cells))
        return headers, keys, rows


# -- templates and files -----------------------------------------------------------------------
def _resources() -> Any:
    return resources.files("galleryvis.templates")


@lru_cache(maxsize=1)
def _environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    """The HTML environment (autoescape) and the Markdown one (every value md-escaped)."""
    root = _resources()

    def load(name: str) -> str:
        return root.joinpath(name).read_text(encoding="utf-8")

    common: dict[str, Any] = dict(
        loader=jinja2.FunctionLoader(load),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    html = jinja2.Environment(autoescape=True, **common)
    html.filters["url"] = site_url
    html.filters["num"] = fmt_number
    html.filters["first_line"] = _first_line
    html.globals["target_text"] = target_text
    # In the Markdown environment every {{ value }} is escaped unless it is built as MdSafe.
    mdenv = jinja2.Environment(autoescape=False, finalize=_md_finalize, **common)
    mdenv.filters["url"] = lambda p: MdSafe(site_url(p))
    mdenv.filters["num"] = fmt_number
    return html, mdenv


class MdSafe(str):
    """Markdown that is already escaped (the Markdown environment's ``Markup``)."""


def _md_finalize(value: Any) -> str:
    return value if isinstance(value, MdSafe) else md_escape(value)


def _first_line(text: str, limit: int = 160) -> str:
    line = next((s for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def technique_description(tech: TechniqueRecord) -> str:
    """``templates/techniques/<name>.md`` when it exists, else the record's ``description_md``."""
    if _TECHNIQUE_NAME.fullmatch(tech.name):
        res = _resources().joinpath("techniques", f"{tech.name}.md")
        if res.is_file():
            return res.read_text(encoding="utf-8")
    return tech.description_md


def _write(path: Path, data: bytes | str) -> Path:
    """Write a page (text as UTF-8) atomically."""
    return atomic_write(path, data.encode("utf-8") if isinstance(data, str) else data)


def _md_cell(site: _Site, table: Table, slot: Slot) -> MdSafe:
    """One Markdown table cell (already escaped)."""
    parts: list[str] = []
    if slot.kind in ("image", "original"):
        parts.append(f"[![{md_escape(slot.alt)}]({site_url(slot.thumb)})]({site_url(slot.src)})")
    elif slot.kind == "failed":
        parts.append(f"**Failed:** {md_escape(_first_line(slot.error, 200))}")
    elif slot.kind == "missing":
        parts.append("*not computed*")
    elif slot.kind == "absent":
        parts.append("—")
    if slot.note:
        parts.append(md_escape(slot.note))
    if slot.metrics:
        parts.append(" · ".join(
            f"{md_escape(name)} {md_escape(value)}" + (" ⚠" if flagged else "")
            for name, value, _, flagged in slot.metrics
        ))
    return MdSafe("<br>".join(parts))


def render_site(gallery: Gallery, out_dir: Path) -> list[Path]:
    """Write the pages of ``gallery`` into ``out_dir`` and return the files written, in order.

    The pictures must already be there (records hold their site-relative paths). Writes
    ``index.html``, ``model-*.html``, ``compare-*.html``, ``technique-*.html``, ``gallery.md``,
    ``style.css``, ``favicon.svg`` and ``.nojekyll``, each atomically; the same records give
    byte-identical files.

    Raises:
        ValueError: a record path that is absolute or contains ``..`` (it could leave the site).
    """
    out_dir = Path(out_dir)
    site = _Site(gallery)
    html, mdenv = _environments()
    families = [(f, FAMILY_TITLES.get(f, _titlecase(f.replace("_", " "))), ts) for f, ts in site.families()]
    common = dict(
        gallery=gallery, site=site, families=families,
        nav_models=[(m, site.model_page[m.id]) for m in gallery.models],
        papers={t.id: split_paper(t.paper) for t in gallery.techniques},
    )
    written: list[Path] = []

    def page(template: str, name: str, **ctx: Any) -> None:
        written.append(_write(out_dir / name, html.get_template(template).render(**common, **ctx)))

    page("index.html.j2", "index.html", page_title="Overview", current="index.html",
         description=render_markdown(gallery.description_md, shift=1))
    for m in gallery.models:
        page("model.html.j2", site.model_page[m.id], page_title=m.name, current=site.model_page[m.id],
             model=m, tables=site.model_tables(m),
             rankings=[site.ranking(r) + (r.protocol,) for r in gallery.rankings if r.model_id == m.id])
    for img in gallery.images:
        page("compare.html.j2", site.compare_page[img.id], page_title=f"Compare models on {img.name}",
             current=site.compare_page[img.id], image=img, tables=site.compare_tables(img))
    for t in gallery.techniques:
        paper_text, paper_url = split_paper(t.paper)
        page("technique.html.j2", site.technique_page[t.id], page_title=t.title,
             current=site.technique_page[t.id], tech=t, paper_text=paper_text, paper_url=paper_url,
             params=sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in t.params.items()),
             description=render_markdown(technique_description(t), shift=1),
             tables=site.technique_tables(t))
    model_md = [
        (m, site.model_tables(m), [site.ranking(r) + (r.protocol,) for r in gallery.rankings if r.model_id == m.id])
        for m in gallery.models
    ]
    md_text = mdenv.get_template("gallery.md.j2").render(
        **common, models_md=model_md, cell=lambda t, s: _md_cell(site, t, s),
        description=MdSafe(embed_markdown(gallery.description_md, shift=1)),
        MdSafe=MdSafe,
    )
    written.append(_write(out_dir / "gallery.md", md_text))
    root = _resources()
    written.append(_write(out_dir / "style.css", root.joinpath("style.css").read_bytes()))
    written.append(_write(out_dir / "favicon.svg", root.joinpath("favicon.svg.j2").read_bytes()))
    written.append(_write(out_dir / ".nojekyll", b""))
    return written
