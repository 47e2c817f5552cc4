"""Plain records in, a static site out: HTML pages, ``gallery.md``, ``style.css``, a favicon.

Rendering never computes: it reads :class:`~galleryvis.render.records.Gallery` (paths, labels,
scores) and writes text. The pictures are already in the output folder at the paths the
records give, relative to the site root; every page sits in that root, so those paths are
the links.

Pages (all relative links, no external scripts, fonts or stylesheets; ``gallery.js`` is the
viewer and the row filter, shipped with the site):

* ``index.html``: title, description, headline results per model, the ranking summary,
  top-5 predictions;
* ``model-<model>.html``: the ranking, the metrics table, then rows = techniques and their variants, columns = images;
* ``compare.html`` and ``compare-<image>.html``: one image, rows = technique variants, columns = models;
  ``compare.html`` also puts the rankings and the metrics tables side by side;
* ``techniques.html`` and ``technique-<technique>.html``: its description and the grid across
  models and images;
* ``atlas-<model>-<technique>.html``: a concept row's atlas: every concept in some image's top-k,
  the largest confidence drop first, with its maps, classes and feature visualization;
* ``build.html``: provenance (versions, device, seeds, weights fingerprints, manifest hash);
* ``gallery.md``: the per-model tables (and metrics tables) in GitHub-flavoured Markdown.

Everything from the records is escaped (jinja2 autoescape for HTML, :func:`md_escape` for
Markdown), and the same records always give byte-identical files.
"""
from __future__ import annotations

import json
import re
from html import escape as html_escape
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import jinja2

from galleryvis.storage.fileio import atomic_write
from galleryvis.render.records import Gallery, ModelRecord, TechniqueRecord
from galleryvis.render.grid import (FAMILY_TITLES, METRICS, Slot, SiteModel, Table, concept_anchor, drop_text, titlecase,
                                    fmt_number, split_papers, target_text)
from galleryvis.render.safe import MdSafe, md_finalize, embed_markdown, md_escape, render_markdown, site_url


_TECHNIQUE_NAME = re.compile(r"[A-Za-z0-9_-]+")


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
    html.globals["random_weights_note"] = random_weights_note
    html.globals["drop_text"] = drop_text
    html.globals["percent"] = lambda share: f"{share * 100:.0f}\u00a0%"
    html.globals["anchor"] = concept_anchor
    # In the Markdown environment every {{ value }} is escaped unless it is built as MdSafe.
    mdenv = jinja2.Environment(autoescape=False, finalize=md_finalize, **common)
    mdenv.filters["url"] = lambda p: MdSafe(site_url(p))
    mdenv.filters["num"] = fmt_number
    mdenv.globals["random_weights_note"] = random_weights_note
    return html, mdenv


def _first_line(text: str, limit: int = 160) -> str:
    line = next((s for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def random_weights_note(models: Iterable[ModelRecord]) -> str:
    """Which of ``models`` have random weights and what that means for the classes shown
    (``"AlexNet is untrained (...), so the classes shown for it are not predictions ..."``);
    ``""`` when none has."""
    names = [m.name for m in models if m.random_weights]
    if not names:
        return ""
    one = len(names) == 1
    who = names[0] if one else ", ".join(names[:-1]) + " and " + names[-1]
    return (f'{who} {"is" if one else "are"} untrained (weights = "none"), so the classes shown for '
            f'{"it" if one else "them"} are not predictions and {"its" if one else "their"} maps explain '
            "no learned features.")


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


#: Width of a picture in gallery.md when its record gives none (GitHub honours ``width``).
MD_WIDTH = 160


def md_picture(src: str, thumb: str, alt: str, width: int, prefix: str = "") -> str:
    """A linked thumbnail as HTML on one line, which GitHub's Markdown renders with its ``width``;
    paths relative to the site root, joined to ``prefix`` (e.g. the site folder seen from a README)."""
    return (f'<a href="{html_escape(prefix + site_url(src))}"><img src="{html_escape(prefix + site_url(thumb))}" '
            f'width="{int(width)}" alt="{html_escape(" ".join(alt.split())).replace("|", "&#124;")}"></a>')


def _md_cell(slot: Slot, prefix: str = "", width: int | None = None) -> MdSafe:
    """One Markdown table cell (already escaped); pictures as :func:`md_picture`."""
    parts: list[str] = []
    if slot.kind in ("image", "original", "prediction"):
        parts.append(md_picture(slot.src, slot.thumb, slot.alt, width or slot.thumb_size.width or MD_WIDTH, prefix))
    for c in slot.concepts:  # a concept cell: each map with its caption and drop
        parts.append(md_picture(c.picture.src, c.picture.thumb, c.picture.alt, (width or MD_WIDTH) // 2, prefix)
                     + " " + md_escape(f"{c.caption}, drop {c.drop}"))
    if slot.random:
        parts.append(md_escape(f"random channels: drop {slot.random}"))
    if slot.legend:
        parts.append(", ".join(md_escape(f"{label} {share}") for _, label, share, _ in slot.legend))
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


def _md_pages(base_url: str) -> Callable[[str], MdSafe | str]:
    """``page(href)`` of the Markdown tables: the HTML page at ``base_url`` (the published site);
    ``""`` (no link) without one, since GitHub shows a relative ``.html`` link as source."""
    return (lambda href: MdSafe(base_url + site_url(href))) if base_url else (lambda href: "")


def markdown_tables(gallery: Gallery, prefix: str = "", width: int | None = None) -> str:
    """The gallery as Markdown tables for a README (``galleryvis embed``): one per technique
    family, rows = technique variants, columns = each image with the models side by side.
    Pictures link to ``prefix`` + their site path, ``width`` px wide (default :data:`MD_WIDTH`);
    HTML pages are linked only at the gallery's ``base_url`` (GitHub shows a relative ``.html``
    as source). The same records give the same text."""
    site = SiteModel(gallery)
    return _environments()[1].get_template("embed.md.j2").render(
        tables=site.gallery_tables(), MdSafe=MdSafe, cell=lambda t, s: _md_cell(s, prefix, width),
        page=_md_pages(gallery.base_url),
    )


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
    site = SiteModel(gallery)
    html, mdenv = _environments()
    families = [(f, FAMILY_TITLES.get(f, titlecase(f.replace("_", " "))), ts) for f, ts in site.families()]
    common = dict(
        gallery=gallery, site=site, families=families,
        nav_models=[(m, site.model_page[m.id]) for m in gallery.models],
        papers={t.id: split_papers(t.paper) for t in gallery.techniques},
        metrics_info=METRICS,
    )
    written: list[Path] = []

    def page(template: str, name: str, **ctx: Any) -> None:
        written.append(_write(out_dir / name, html.get_template(template).render(**common, **ctx)))

    def scales(tables: list[tuple[Any, Table]]) -> list[str]:
        return list(dict.fromkeys(k for _, t in tables for k in t.scales()))

    def scored(tables: list[tuple[Any, Table]]) -> bool:
        return any(sl.metrics or sl.skipped for _, t in tables for r in t.rows for sl in r.slots)

    teasers = site.teaser_tables()
    page("index.html.j2", "index.html", page_title="Overview", current="index.html",
         description=render_markdown(gallery.description_md, shift=1), teasers=teasers,
         teaser_scales=scales(teasers),
         summaries=[(site.models[r.model_id], *site.ranking_summary(r)) for r in gallery.rankings
                    if r.model_id in site.models], agreements=site.agreements())
    for m in gallery.models:
        tables = site.model_tables(m)
        page("model.html.j2", site.model_page[m.id], page_title=m.name, current=site.model_page[m.id],
             model=m, tables=tables, scales=scales(tables), has_scores=scored(tables), atlases=site.atlases(m.id),
             metrics_view=site.model_metrics(m),
             rankings=[site.ranking(r) + (r.protocol,) for r in gallery.rankings if r.model_id == m.id])
    for atlas in gallery.atlases:
        name = site.atlas_page.get((atlas.model_id, atlas.technique_id))
        if name is None:
            continue
        m, t = site.models[atlas.model_id], site.techniques[atlas.technique_id]
        page("atlas.html.j2", name, page_title=f"Concept atlas of {m.name} at {atlas.layer}", current=name,
             atlas=atlas, model=m, tech=t, row_id=site.row_id(t.id),
             scales=list(dict.fromkeys(a.picture.scale for c in atlas.concepts for a in c.appearances if a.picture.scale)))
    page("compare_index.html.j2", "compare.html", page_title="Compare models", current="compare.html")
    for img in gallery.images:
        tables = site.compare_tables(img)
        page("compare.html.j2", site.compare_page[img.id], page_title=f"Compare models on {img.name}",
             current=site.compare_page[img.id], image=img, tables=tables, scales=scales(tables),
             has_scores=scored(tables))
    page("techniques.html.j2", "techniques.html", page_title="Techniques", current="techniques.html")
    for t in gallery.techniques:
        tables = site.technique_tables(t)
        page("technique.html.j2", site.technique_page[t.id], page_title=t.title,
             current=site.technique_page[t.id], tech=t,
             params=sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in t.params.items()),
             description=render_markdown(technique_description(t), shift=1),
             tables=tables, scales=scales(tables), has_scores=scored(tables))
    page("build.html.j2", "build.html", page_title="Build", current="build.html")
    model_md = [
        (m, site.model_tables(m), [site.ranking(r) + (r.protocol,) for r in gallery.rankings if r.model_id == m.id],
         site.model_metrics(m))
        for m in gallery.models
    ]
    md_text = mdenv.get_template("gallery.md.j2").render(
        **common, models_md=model_md, cell=lambda t, s: _md_cell(s), page=_md_pages(gallery.base_url),
        picture=md_picture, metrics_shown=any(c.metrics for c in gallery.cells),
        description=MdSafe(embed_markdown(gallery.description_md, shift=1)),
        MdSafe=MdSafe,
    )
    written.append(_write(out_dir / "gallery.md", md_text))
    root = _resources()
    written.append(_write(out_dir / "style.css", root.joinpath("style.css").read_bytes()))
    written.append(_write(out_dir / "gallery.js", root.joinpath("gallery.js").read_bytes()))
    written.append(_write(out_dir / "favicon.svg", root.joinpath("favicon.svg.j2").read_bytes()))
    written.append(_write(out_dir / ".nojekyll", b""))
    return written
