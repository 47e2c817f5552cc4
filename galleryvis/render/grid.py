"""The grid view model: the tables (rows = technique variants, columns = images or models) that
both the HTML pages and ``gallery.md`` draw, built from plain records; labels, numbers, sparklines."""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from galleryvis.families import FAMILIES
from galleryvis.naming import slug, unique_slugs
from galleryvis.render.records import (Atlas, Cell, Gallery, ImageRecord, MetricTable, ModelRecord, Prediction,
                                       Ranking, Size, TechniqueRecord, Variant)


#: A cell whose map keeps at least this rank correlation after the model's weights are
#: randomized is flagged (Adebayo et al. 2018); ``gallery.summary["sanity_threshold"]`` overrides.
SANITY_THRESHOLD = 0.5


#: Section titles of the technique groups, in page order: the display kinds, then the families'
#: titles; others follow, title-cased. A family that splits by kind (attribution) is grouped by how
#: its techniques are drawn (their registry kind), so no table grows too tall.
FAMILY_TITLES = {"gradient": "Gradients", "cam": "Class activation maps",
                 "signed": "Signed attributions", "perturbation": "Perturbation and Shapley",
                 **{f.name: f.title for f in FAMILIES.values()}}


#: The metrics a cell may carry, in display order: ``(name, short name, meaning, better)``.
METRICS = {
    "deletion_auc": ("Deletion AUC", "Del", "the target's confidence as the most relevant pixels are removed first; "
                     "a faithful map makes it fall fast", "lower"),
    "insertion_auc": ("Insertion AUC", "Ins", "the target's confidence as the most relevant pixels are inserted "
                      "first onto a blurred copy; a faithful map makes it rise fast", "higher"),
    "road_morf": ("ROAD MoRF", "MoRF", "the target's confidence after the most relevant pixels are removed by noisy "
                  "linear imputation (ROAD); a faithful map makes it low", "lower"),
    "road_lerf": ("ROAD LeRF", "LeRF", "the target's confidence after the least relevant pixels are removed by noisy "
                  "linear imputation (ROAD); a faithful map keeps it high", "higher"),
    "sanity": ("Sanity ρ", "ρ", "rank correlation with the map after the model's top layers are re-initialized "
               "(cascading randomization); a map that barely changes ignores what the model learned", "lower"),
}


#: The arrow a metrics table's header shows for each direction.
ARROWS = {"higher": "↑", "lower": "↓"}

#: How many of a detector's detections the legend of its "Detections" row names (the explained one always).
LEGEND_BOXES = 6


#: The variants the landing page shows, one technique each, in this order.
HEADLINE_VARIANTS = ("overlay", "saliency", "diverging")


#: How a variant key turns into the seed's row labels; others give ``"<title> <Label>"``.
ROW_LABELS = {"color": "Colored {title}", "image": "{title}"}


_SMALL_WORDS = frozenset({"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to", "with"})


_URL = re.compile(r"https?://[^\s<>\"'|)\]]+[^\s<>\"'|)\].,;:]")


def target_text(label: str, index: int | None) -> str:
    """``"Target class: Egyptian cat (285)"``; a unit that is not a class as its label says it
    (``"Channel 23"``); ``""`` when the cell has no target."""
    if index is None:
        return label[:1].upper() + label[1:]
    return f"Target class: {label} ({index})" if label else f"Target class: {index}"


def share_text(share: float) -> str:
    """A share of the pixels in whole percent: ``"18 %"``; ``"<1 %"`` for a share above 0 that
    rounds to 0."""
    return "<1 %" if 0 < share < 0.005 else f"{share * 100:.0f} %"


def titlecase(text: str) -> str:
    """Each word capitalized, except short ones (a, of, the, ...) after the first; capitals are kept."""
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
    return f"{title} {titlecase(variant.label)}".strip()


def fmt_number(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` decimals; ints, bools and strings as they are."""
    if isinstance(value, bool) or value is None:
        return "yes" if value else ("—" if value is None else "no")
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def split_papers(paper: str) -> list[tuple[str, str]]:
    """The record's citations, ``;``-separated, each as (text, URL or ""): e.g.
    ``[("Bach et al. 2015", "https://doi.org/..."), ("Montavon et al. 2019", "https://...")]``."""
    out = []
    for part in (paper or "").split(";"):
        m = _URL.search(part)
        text = (part if not m else part[: m.start()] + part[m.end():]).strip().strip(",").strip()
        if text or m:
            out.append((text, m.group(0) if m else ""))
    return out


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


@dataclass
class Column:
    """One grid column: a (model, image) pair with its header (in a :meth:`SiteModel.side_by_side`
    table, a technique's header: no image, and the model of its first row)."""

    model: ModelRecord
    image: ImageRecord | None
    title: str
    href: str
    target: str = ""
    target_key: tuple[str, int | None] | None = None


def concept_caption(channel: int, share: float) -> str:
    """A concept's caption: its channel and its share of the layer's relevance, ``"ch 17 · 23 %"``."""
    return f"ch {channel} · {share * 100:.0f} %"


def drop_text(drop: float | None) -> str:
    """A confidence drop as the pages print it: ``"0.124"``, ``"3.6e-04"`` below 0.001 in size, ``"—"``
    when not measured."""
    if drop is None:
        return "—"
    return f"{drop:.3f}" if drop == 0 or abs(drop) >= 0.001 else f"{drop:.1e}"


def concept_anchor(channel: int) -> str:
    """The id of a concept's entry on its atlas page."""
    return f"concept-{channel}"


@dataclass(frozen=True)
class ConceptView:
    """One concept of a concept slot: its picture and viewer values, ``caption``
    (:func:`concept_caption`), ``href`` (its atlas entry), ``drop`` and the ``hint`` that says
    what the drop means."""

    picture: Variant
    values: str
    caption: str
    href: str
    drop: str
    hint: str


@dataclass
class Slot:
    """One data cell of a grid row; ``kind`` is image, original, prediction (a segmentation's label
    map), concepts (a concept cell's maps), failed, missing, absent or spanned."""

    kind: str
    cell: Cell | None = None
    variant: Variant | None = None
    src: str = ""
    thumb: str = ""
    alt: str = ""
    size: Size = Size(0, 0)
    thumb_size: Size = Size(0, 0)
    image: str = ""  # the input picture under the map (the viewer's base)
    rowspan: int = 1
    note: str = ""
    metrics: list[tuple[str, str, str, bool]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    spark: Sparkline | None = None
    spark_label: str = ""
    plot: str = ""
    error: str = ""
    curves: list[tuple[str, Sparkline]] = field(default_factory=list)
    legend: list[tuple[str, str, str, bool]] = field(default_factory=list)  # a prediction's (colour, class, share, explained)
    rest: str = ""  # the share of the pixels of the classes its legend leaves out ("" when none)
    labels: str = ""  # a prediction's label map (a PNG of class indices)
    legend_label: str = ""  # what its legend lists, in words
    concepts: list[ConceptView] = field(default_factory=list)  # a concept cell's concepts, most relevant first
    random: str = ""  # a concept cell's median drop for random channels, as text


@dataclass
class Row:
    """One grid row: a technique variant (or the original images) across the columns; in a
    :meth:`SiteModel.side_by_side` table, a ``model``."""

    label: str
    slots: list[Slot]
    technique: TechniqueRecord | None = None
    href: str = ""
    sub: str = ""
    first: bool = False
    id: str = ""
    model: ModelRecord | None = None


@dataclass
class Table:
    """A grid: caption, column headers, rows."""

    caption: str
    corner: str
    columns: list[Column]
    rows: list[Row]

    def scales(self) -> list[str]:
        """The colour-scale keys of the pictures in this table, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for sl in row.slots:
                if sl.variant is not None and sl.variant.scale:
                    seen.setdefault(sl.variant.scale)
        return list(seen)


@dataclass
class MetricHeader:
    """A metrics table's column: the metric's name, which way is better (and its arrow), what it
    measures (``meaning``, "" when unknown)."""

    key: str
    title: str
    category: str
    better: str
    arrow: str
    meaning: str

    @property
    def hint(self) -> str:
        """The header's hover text: name, meaning, direction."""
        return f"{self.title}: {self.meaning}; {self.better} is better" if self.meaning else \
            f"{self.title}; {self.better} is better"


@dataclass
class MetricEntry:
    """One value of a metrics table: its text (the mean), its rank among the ``of`` values of its
    column, whether it is the best, and ``note``: "2 of 3 images" when it covers fewer than all."""

    text: str
    rank: int
    of: int
    best: bool
    note: str = ""


@dataclass
class MetricsView:
    """A metrics table to draw: ``groups`` (category, columns) over the ``headers``; with several
    ``models``, one column per model under each header; ``rows``: (technique title, page, one
    entry per column or None where the technique lacks the metric); ``starts``: per column,
    whether it opens a group (a category, or a metric's models), where a rule separates them."""

    groups: list[tuple[str, int]]
    headers: list[MetricHeader]
    models: list[ModelRecord]
    rows: list[tuple[str, str, list[MetricEntry | None]]]
    starts: list[bool]
    protocol: str = ""  # how the gallery's own scores were measured (the ranking's protocol)


class SiteModel:
    """Page names and lookups for one gallery."""

    def __init__(self, gallery: Gallery) -> None:
        self.g = gallery
        self.models = {m.id: m for m in gallery.models}
        self.images = {i.id: i for i in gallery.images}
        self.techniques = {t.id: t for t in gallery.techniques}
        self.model_slug = dict(zip(self.models, unique_slugs(self.models)))
        self.model_page = {m: f"model-{s}.html" for m, s in self.model_slug.items()}
        self.compare_page = dict(zip(self.images, (f"compare-{s}.html" for s in unique_slugs(self.images))))
        self.technique_slug = dict(zip(self.techniques, unique_slugs(self.techniques)))
        self.technique_page = {t: f"technique-{s}.html" for t, s in self.technique_slug.items()}
        shown = [a for a in gallery.atlases if a.model_id in self.models and a.technique_id in self.techniques]
        atlas_ids = [f"{self.model_slug[a.model_id]}-{self.technique_slug[a.technique_id]}" for a in shown]
        self.atlas_page = {(a.model_id, a.technique_id): f"atlas-{s}.html" for a, s in zip(shown, unique_slugs(atlas_ids))}
        threshold = gallery.summary.get("sanity_threshold", SANITY_THRESHOLD)
        self.sanity_threshold = float(threshold) if isinstance(threshold, (int, float)) else SANITY_THRESHOLD

    def families(self) -> list[tuple[str, list[TechniqueRecord]]]:
        """Techniques grouped by their registry group, else by family (split by display kind for a
        family that says so, attribution): known groups first, then the rest by first appearance."""
        groups: dict[str, list[TechniqueRecord]] = {}
        for t in self.g.techniques:
            group = t.group or (t.kind if FAMILIES[t.family].split_by_kind and t.kind in FAMILY_TITLES else t.family)
            groups.setdefault(group, []).append(t)
        order = [f for f in FAMILY_TITLES if f in groups] + [f for f in groups if f not in FAMILY_TITLES]
        return [(f, groups[f]) for f in order]

    # -- grids -------------------------------------------------------------------------------
    def column_target(self, model: ModelRecord, image: ImageRecord, techs: list[TechniqueRecord]) -> tuple[str, int | None] | None:
        """The most common target (a class or a free text) of that model's cells on that image
        (first in row order on ties); cells whose unit is not a target (a channel) count only
        when no cell has one."""
        cells = [c for t in techs if (c := self.g.cell(model.id, image.id, t.id)) is not None]
        classes = Counter((c.target_label, c.target_index) for c in cells if c.target_index is not None or c.text)
        others = Counter((c.target_label, c.target_index) for c in cells
                         if c.target_index is None and c.target_label and not c.text)
        counts = classes or others
        return counts.most_common(1)[0][0] if counts else None

    def alt(self, tech: TechniqueRecord, variant: Variant, model: ModelRecord, image: ImageRecord | None,
            cell: Cell) -> str:
        if variant.alt:
            return variant.alt
        target = target_text(cell.target_label, cell.target_index)
        return (
            f"{tech.title}, {variant.label.replace('{title}', tech.title)}: model {model.name}"
            + (f", image {image.name}" if image else "") + (f", {target[0].lower()}{target[1:]}" if target else "")
        )

    def describe(self, key: str) -> tuple[str, str, str, str]:
        """``(name, short name, meaning, better)`` of a metric: the gallery's own from
        :data:`METRICS`, ``[metrics] compute``'s from the gallery's ``metric_notes``."""
        return METRICS.get(key, (titlecase(key.replace("_", " ")), key, *self.g.metric_notes.get(key, ("", ""))))

    def metrics(self, cell: Cell) -> list[tuple[str, str, str, bool]]:
        """``(short name, value, hint, flagged)`` for each metric: known ones first, then sorted."""
        keys = [k for k in METRICS if k in cell.metrics] + sorted(k for k in cell.metrics if k not in METRICS)
        out = []
        for k in keys:
            name, short, meaning, better = self.describe(k)
            hint = f"{name}: {meaning}; {better} is better" if meaning else name
            value = cell.metrics[k]
            flagged = (
                k.startswith("sanity")
                and isinstance(value, (int, float))
                and math.isfinite(value)
                and value >= self.sanity_threshold
            )
            if flagged:
                hint = f"{hint}; at or above {self.sanity_threshold:g}: flagged"
            out.append((short, fmt_number(value), hint, flagged))
        return out

    def skipped(self, cell: Cell) -> list[tuple[str, str]]:
        """``(short name, reason)`` of each metric the build did not compute for this cell."""
        return [(METRICS[k][1] if k in METRICS else k, why) for k, why in sorted(cell.skipped.items())]

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
        prefix: str = "",
        only: dict[str, str] | None = None,
    ) -> Table | None:
        """Rows = each technique's variants (union over the columns; with ``only``, the one variant
        key it gives each technique id),
        one slot per column; row ids start with ``prefix`` (unique on a page)."""
        for col in columns:
            assert col.image is not None, "a grid's columns are (model, image) pairs"
            key = self.column_target(col.model, col.image, techs)
            col.target_key = key
            col.target = target_text(*key) if key else ""
        rows: list[Row] = []
        if original:
            rows.append(Row("Original Image", [self.original(col.model, col.image) for col in columns],
                            first=True, id=f"{prefix}original"))
            if any(col.image.id in col.model.segmentations for col in columns):
                rows.append(Row("Prediction", [self.prediction(col.model, col.image) for col in columns],
                                sub="argmax over classes", id=f"{prefix}prediction"))
            if any(col.image.id in col.model.detections for col in columns):
                rows.append(Row("Detections", [self.detections(col.model, col.image) for col in columns],
                                sub="kept detections, best first", id=f"{prefix}detections"))
        for tech in techs:
            cells = [self.g.cell(col.model.id, col.image.id, tech.id) for col in columns]  # type: ignore[union-attr]
            if all(c is None for c in cells):
                continue
            keys: dict[str, Variant] = {}
            for c in cells:
                for v in c.variants if c is not None and c.status == "ok" else ():
                    if only is None or only.get(tech.id) == v.key:
                        keys.setdefault(v.key, v)
            if only is not None and not keys:
                continue
            variants: list[Variant | None] = list(keys.values()) or [None]
            layers = sorted({col.model.layers[tech.id] for col in columns if tech.id in col.model.layers})
            sub = tech.name + (f" · layer {', '.join(layers)}" if sub_layer and layers else "")
            group = [
                Row(row_label(tech.title, v), [], tech, self.technique_page[tech.id], sub, first=j == 0,
                    id=prefix + self.technique_slug[tech.id] + (f"-{v.key}" if v is not None else ""))
                for j, v in enumerate(variants)
            ]
            for col, cell in zip(columns, cells):
                for j, (row, v) in enumerate(zip(group, variants)):
                    row.slots.append(self.slot(col.model, col.image, col.target_key, tech, cell, v, j, len(variants),
                                               plots))
            rows.extend(group)
        if all(row.technique is None for row in rows):
            return None
        return Table(caption, corner, columns, rows)

    def side_by_side(self, caption: str, models: list[ModelRecord], techs: list[TechniqueRecord],
                     prefix: str = "") -> Table | None:
        """The rows that read no image (a class visualization with a ``target`` of its own) side
        by side, as the seed shows its regularizations: columns are those techniques, rows are
        ``models``, one picture each; None when there are none."""
        techs = [t for t in techs if any(self.g.cell(m.id, "", t.id) for m in models)]
        rows = []
        for model in models:
            cells = [self.g.cell(model.id, "", t.id) for t in techs]
            if all(c is None for c in cells):
                continue
            slots = [self.slot(model, None, None, t, c, c.variants[0] if c and c.variants else None, 0, 1, False)
                     for t, c in zip(techs, cells)]
            rows.append(Row(model.name, slots, href=self.model_page[model.id], first=not rows,
                            id=f"{prefix}{self.model_slug[model.id]}", model=model))
        if not rows:
            return None
        columns = [Column(models[0], None, t.id, self.technique_page[t.id]) for t in techs]
        return Table(caption, "Model", columns, rows)

    def original(self, model: ModelRecord, image: ImageRecord) -> Slot:
        """The original image of a column: the model's crop with its region outlined where the
        column's target gives one, else the image."""
        pic = model.regions.get(image.id)
        if pic is not None:
            return Slot("original", src=pic.src, thumb=pic.thumb, alt=pic.alt, size=pic.size, thumb_size=pic.thumb_size,
                        note=f"{pic.label.lower()} outlined")
        return Slot("original", src=image.src, thumb=image.thumb or image.src, alt=f"Original image {image.name}",
                    size=image.size, thumb_size=image.thumb_size)

    def prediction(self, model: ModelRecord, image: ImageRecord) -> Slot:
        """A segmentation model's label map of ``image`` with its legend; ``missing`` for a model
        that has none."""
        seg = model.segmentations.get(image.id)
        if seg is None:
            return Slot("missing")
        pic = seg.picture
        rest = 1.0 - sum(c.share for c in seg.classes)
        return Slot("prediction", src=pic.src, thumb=pic.thumb, alt=pic.alt, size=pic.size, thumb_size=pic.thumb_size,
                    legend=[(c.colour, c.label, share_text(c.share), c.explained) for c in seg.classes],
                    rest=share_text(rest) if rest >= 0.005 else "", labels=seg.labels,
                    legend_label="Classes in the label map, share of pixels")

    def detections(self, model: ModelRecord, image: ImageRecord) -> Slot:
        """A detector's detections of ``image`` drawn on its crop, with a legend of the first
        :data:`LEGEND_BOXES` (and the explained one): class and score; ``missing`` for a model
        that has none."""
        found = model.detections.get(image.id)
        if found is None:
            return Slot("missing")
        pic = found.picture
        shown = [b for i, b in enumerate(found.boxes) if i < LEGEND_BOXES or b.explained]
        left = len(found.boxes) - len(shown)
        return Slot("prediction", src=pic.src, thumb=pic.thumb, alt=pic.alt, size=pic.size, thumb_size=pic.thumb_size,
                    legend=[(b.colour, b.label, f"{b.score:.2f}", b.explained) for b in shown],
                    rest=f"{left} more" if left else "", legend_label="Detections, best first: class, score")

    def slot(self, model: ModelRecord, image: ImageRecord | None, target_key: tuple[str, int | None] | None,
             tech: TechniqueRecord, cell: Cell | None, v: Variant | None, j: int, span: int, plots: bool) -> Slot:
        """One data cell: ``model`` on ``image`` (None: a cell that reads no image); its target
        is noted when it is not the column's ``target_key``."""
        if cell is None or cell.status != "ok":
            if j:
                return Slot("spanned", cell)
            if cell is None:
                return Slot("missing", rowspan=span)
            return Slot("failed", cell, rowspan=span, error=cell.error or "failed (no message)")
        found = next((x for x in cell.variants if v is not None and x.key == v.key), None)
        if cell.concepts:
            slot = self.concept_slot(model, image, cell)
        elif found is None:
            slot = Slot("absent", cell)
        else:
            slot = Slot(
                "image", cell, found, found.src, found.thumb or found.src,
                self.alt(tech, found, model, image, cell), found.size, found.thumb_size,
                (model.regions[image.id].src if image.id in model.regions else image.src) if image else "",
            )
        if j == 0:
            if (cell.target_label, cell.target_index) != target_key and (cell.target_label or cell.target_index is not None):
                slot.note = target_text(cell.target_label, cell.target_index)
            slot.metrics = self.metrics(cell)
            slot.skipped = self.skipped(cell)
            slot.spark = sparkline(cell.trace)
            slot.spark_label = (
                f"Objective per step of {tech.title}, model {model.name}" + (f", image {image.name}" if image else "")
            )
            slot.plot = cell.plot if plots else ""
            if plots:
                slot.curves = [(name, sp) for name, values in sorted(cell.curves.items())
                               if (sp := sparkline(values)) is not None]
        return slot

    def atlases(self, model_id: str) -> list[tuple[Atlas, str, TechniqueRecord]]:
        """The model's concept atlases with their pages and rows."""
        return [(a, self.atlas_page[(a.model_id, a.technique_id)], self.techniques[a.technique_id])
                for a in self.g.atlases if a.model_id == model_id and (a.model_id, a.technique_id) in self.atlas_page]

    def row_id(self, tech_id: str) -> str:
        """The id of a technique's first row in the family tables (model and compare pages)."""
        group = next(f for f, techs in self.families() if any(t.id == tech_id for t in techs))
        return f"{slug(group)}-{self.technique_slug[tech_id]}"

    def concept_slot(self, model: ModelRecord, image: ImageRecord | None, cell: Cell) -> Slot:
        """A concept cell: its maps with their captions (each linked to its concept's atlas entry)
        and drops; ``variant`` is the first map's (for the colour legend)."""
        page = self.atlas_page.get((model.id, cell.technique_id), "")
        random = drop_text(cell.random_drop)
        views = [ConceptView(c.picture, c.values, concept_caption(c.channel, c.share),
                             f"{page}#{concept_anchor(c.channel)}" if page else "", drop_text(c.drop),
                             f"the target's confidence drops by {drop_text(c.drop)} when channel {c.channel} is "
                             f"zeroed; {random} is the median drop for {cell.random_channels} random channels")
                 for c in cell.concepts]
        under = (model.regions[image.id].src if image.id in model.regions else image.src) if image else ""
        first = cell.concepts[0].picture
        return Slot("concepts", cell, first, image=under, concepts=views, random=random)

    def _family_tables(self, subject: str, columns: Callable[[], list[Column]], noun: str,
                       per_model: bool, models: list[ModelRecord], prefix: str = "",
                       original: bool | None = None) -> list[tuple[str, Table]]:
        """One grid per technique family (fresh columns each: a grid sets their targets), then
        the family's rows that read no image for ``models`` (:meth:`side_by_side`); a model's
        page also shows the original images and each technique's layer (``original``: the
        original images' rows whatever ``per_model`` says). Row ids start with ``prefix``
        (unique on a page)."""
        out = []
        for family, techs in self.families():
            title = FAMILY_TITLES.get(family, titlecase(family.replace("_", " ")))
            table = self.grid(f"{subject}: {title.lower()}; rows are techniques and their variants, "
                              f"columns are {noun}", "Technique", columns(), techs,
                              original=per_model if original is None else original, sub_layer=per_model,
                              prefix=f"{prefix}{slug(family)}-")
            if table:
                out.append((title, table))
            beside = self.side_by_side(f"{subject}: {title.lower()} of a class of their own, made from no image; "
                                       "columns are techniques, rows are models", models, techs,
                                       prefix=f"{prefix}{slug(family)}-side-")
            if beside:
                out.append((f"{title} side by side", beside))
        return out

    def model_tables(self, model: ModelRecord) -> list[tuple[str, Table]]:
        return self._family_tables(
            model.name, lambda: [Column(model, img, img.name, self.compare_page[img.id]) for img in self.g.images],
            "images", True, [model])

    def gallery_tables(self) -> list[tuple[str, Table]]:
        """Every image with the models side by side (a column per pair), one grid per family."""
        many = len(self.g.models) > 1
        return self._family_tables(
            self.g.title, lambda: [Column(m, img, f"{img.name} · {m.name}" if many else img.name, self.compare_page[img.id])
                                   for img in self.g.images for m in self.g.models],
            "images and models", True, self.g.models)

    def compare_tables(self, image: ImageRecord) -> list[tuple[str, Table]]:
        """The models side by side on ``image``, those of one task together (a segmenter's maps
        explain other targets than a classifier's); rows that read no image are on the model pages.
        Detectors explain a detection each (their best match to one box, say): their grids start
        with each model's original image, its explained detection outlined, and its Detections row."""
        by_task: dict[str, list[ModelRecord]] = {}
        for m in self.g.models:
            by_task.setdefault(m.task, []).append(m)
        out = []
        for task, models in by_task.items():
            subject = image.name if len(by_task) == 1 else f"{image.name}, {task} models"
            tables = self._family_tables(subject, lambda models=models: [  # type: ignore[misc]
                Column(m, image, m.name, self.model_page[m.id]) for m in models], "models", False, [],
                prefix="" if len(by_task) == 1 else f"{slug(task)}-",
                original=any(image.id in m.detections for m in models))
            out += [(title if len(by_task) == 1 else f"{title}: {task} models", t) for title, t in tables]
        return out

    def technique_tables(self, tech: TechniqueRecord) -> list[tuple[ModelRecord, Table]]:
        out = []
        for model in self.g.models:
            cols = [Column(model, img, img.name, self.compare_page[img.id]) for img in self.g.images]
            table = self.grid(f"{tech.title} on {model.name}; rows are variants, columns are images",
                              "Variant", cols, [tech], original=True, sub_layer=True, plots=True,
                              prefix=f"{self.model_slug[model.id]}-") \
                or self.side_by_side(f"{tech.title} on {model.name}, made from no image", [model], [tech],
                                     prefix=f"{self.model_slug[model.id]}-")
            if table:
                out.append((model, table))
        return out

    def headline(self) -> dict[str, str]:
        """The landing page's techniques: the first technique of a headline family (attribution)
        drawn as a heatmap on the image, as a saliency map and as a signed map (technique id ->
        variant key)."""
        chosen: dict[str, str] = {}
        for key in HEADLINE_VARIANTS:
            for tech in self.g.techniques:
                if FAMILIES[tech.family].headline and tech.id not in chosen and any(
                        v.key == key for c in self.g.cells if c.technique_id == tech.id for v in c.variants):
                    chosen[tech.id] = key
                    break
        return chosen

    def teaser_tables(self) -> list[tuple[ModelRecord, Table]]:
        """Per model: the images (columns) under the :meth:`headline` techniques (rows)."""
        only = self.headline()
        techs = [t for t in self.g.techniques if t.id in only]
        out = []
        for model in self.g.models:
            cols = [Column(model, img, img.name, self.compare_page[img.id]) for img in self.g.images]
            table = self.grid(f"{model.name}: headline techniques; columns are images", "Technique", cols, techs,
                              original=True, sub_layer=False, prefix=f"teaser-{self.model_slug[model.id]}-",
                              only=only)
            if table:
                out.append((model, table))
        return out

    def ranking_summary(self, r: Ranking, top: int = 3) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        """The ``top`` techniques of a ranking as ``(title, href, score)`` and the baselines' scores."""
        best = [(self.name("technique", row["technique"]), self.technique_page.get(row["technique"], ""),
                 fmt_number(row.get("score"))) for row in r.rows if not row.get("baseline")][:top]
        baselines = [(row["technique"], fmt_number(row.get("score"))) for row in r.rows if row.get("baseline")]
        return best, baselines

    def ranking_comparison(self) -> tuple[list[ModelRecord], list[tuple[str, str, bool, list[tuple[str, bool]]]]]:
        """The rankings side by side: the ranked models, and one row per technique or baseline
        (the first ranking's order, then what only later ones rank) as ``(title, href,
        is_baseline, [(text, best)])``, one cell per model: ``"score (#rank)"`` or ``"—"``, and
        whether that score is the row's highest (only where at least two models have one)."""
        ranked = [(self.models[r.model_id], r) for r in self.g.rankings if r.model_id in self.models]
        by_model = [{row["technique"]: (n, row) for n, row in enumerate(r.rows, 1)} for _, r in ranked]
        order = list(dict.fromkeys(t for ranks in by_model for t in ranks))
        rows = []
        for tech in order:
            entries = [ranks.get(tech) for ranks in by_model]
            scores = [float(e[1]["score"]) for e in entries if e is not None and isinstance(e[1].get("score"), (int, float))]
            top = max(scores) if len(scores) > 1 else None
            cells = [("—", False) if e is None else
                     (f"{fmt_number(e[1].get('score'))} (#{e[0]})", top is not None and e[1].get("score") == top)
                     for e in entries]
            baseline = any(e is not None and e[1].get("baseline") for e in entries)
            rows.append((self.name("technique", tech), self.technique_page.get(tech, ""), baseline, cells))
        return [m for m, _ in ranked], rows

    def top_predictions(self, image: ImageRecord) -> tuple[list[tuple[ModelRecord, Prediction | None]], bool]:
        """Each model's top-1 prediction for ``image`` (None without predictions), and whether
        the models that have one disagree."""
        tops = [(m, (m.predictions.get(image.id) or [None])[0]) for m in self.g.models]
        return tops, len({p.index for _, p in tops if p is not None}) > 1

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
        headers = [METRICS[k][0] if k in METRICS else titlecase(k.replace("_", " ")) for k in keys]
        rows = []
        for row in r.rows:
            cells = []
            for k in keys:
                v = row.get(k)
                href = self.technique_page.get(v, "") if isinstance(v, str) and k in ("technique", "technique_id", "id") else ""
                cells.append((fmt_number(v) if not isinstance(v, str) else v, href))
            rows.append((bool(row.get("baseline")), cells))
        return headers, keys, rows

    def metrics_view(self, tables: list[MetricTable]) -> MetricsView:
        """The metrics tables of ``tables``' models as one view: their columns (the first table's
        order, then what only later ones have, kept by category) with one column per model under
        each, and a row per technique that has a value (the gallery's order)."""
        columns = {c.key: c for t in tables for c in t.columns}
        categories = list(dict.fromkeys(c.category for c in columns.values()))
        keys = sorted(columns, key=lambda k: categories.index(columns[k].category))
        headers = []
        for k in keys:
            name, _, meaning, _ = self.describe(k)
            better = columns[k].better
            headers.append(MetricHeader(k, name, columns[k].category, better, ARROWS[better], meaning))
        counts = {(n, k): sum(k in row for row in t.rows.values()) for n, t in enumerate(tables) for k in keys}
        rows = []
        for tech in self.g.techniques:
            if not any(tech.id in t.rows for t in tables):
                continue
            entries: list[MetricEntry | None] = []
            for k in keys:
                for n, t in enumerate(tables):
                    v = t.rows.get(tech.id, {}).get(k)
                    entries.append(None if v is None else MetricEntry(
                        fmt_number(v.mean, 4), v.rank, counts[(n, k)], v.best,
                        f"{v.images} of {t.images} images" if v.images < t.images else ""))
            rows.append((tech.title, self.technique_page[tech.id], entries))
        groups = [(c, sum(h.category == c for h in headers)) for c in categories]
        opens = [i == 0 or h.category != headers[i - 1].category for i, h in enumerate(headers)]
        starts = [n == 0 and (opens[i] or len(tables) > 1) for i in range(len(headers)) for n in range(len(tables))]
        protocols = [r.protocol for r in self.g.rankings if r.model_id in {t.model_id for t in tables} and r.protocol]
        return MetricsView(groups, headers, [self.models[t.model_id] for t in tables], rows, starts,
                           protocols[0] if protocols else "")

    def agreements(self) -> list[tuple[ModelRecord, list[tuple[str, str, str, str]]]]:
        """The landing page's meta-evaluation: per model with one, for each category ``(category,
        tau, verdict, what)``: Kendall's tau in two decimals, whether the metrics agree on the
        ranking of the techniques (tau >= 0.6), partly (>= 0.2) or not, and which metrics over
        how many techniques."""
        out = []
        for t in self.g.metric_tables:
            if t.agreement and t.model_id in self.models:
                lines = []
                for a in t.agreement:
                    verdict = "agree" if a.tau >= 0.6 else "partly agree" if a.tau >= 0.2 else "disagree"
                    names = ", ".join(self.describe(k)[0] for k in a.metrics)
                    lines.append((a.category, f"{a.tau:.2f}", verdict, f"{names}; {a.techniques} techniques"))
                out.append((self.models[t.model_id], lines))
        return out

    def model_metrics(self, model: ModelRecord) -> MetricsView | None:
        """``model``'s metrics table, None when it has none."""
        tables = [t for t in self.g.metric_tables if t.model_id == model.id]
        return self.metrics_view(tables) if tables else None

    def metrics_comparison(self) -> list[tuple[str, MetricsView]]:
        """The metrics tables of each task's models side by side, for each task that has two
        or more models with one: ``(task, view)``."""
        by_task: dict[str, list[MetricTable]] = {}
        for t in self.g.metric_tables:
            if t.model_id in self.models:
                by_task.setdefault(self.models[t.model_id].task, []).append(t)
        return [(task, self.metrics_view(tables)) for task, tables in by_task.items() if len(tables) > 1]
