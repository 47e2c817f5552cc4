"""Plain records that rendering reads: paths, labels, scores, timings; never tensors."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any

#: The site file that holds a gallery's records (``galleryvis embed`` reads it back).
RECORDS_FILE = "gallery.json"
#: A cell's fields that only a concept cell fills (left out of :data:`RECORDS_FILE` elsewhere).
_CONCEPT_FIELDS = ("concepts", "random_drop", "random_channels")


@dataclass(frozen=True)
class Prediction:
    """One of a model's top-k classes for an image."""

    index: int
    label: str
    prob: float


@dataclass(frozen=True)
class Size:
    """A picture's width and height in pixels."""

    width: int
    height: int


@dataclass(frozen=True)
class ImageRecord:
    """An input image: ``src`` is the model-input crop, relative to the site root."""

    id: str
    name: str
    src: str
    thumb: str
    size: Size = Size(0, 0)
    thumb_size: Size = Size(0, 0)


@dataclass(frozen=True)
class Variant:
    """One rendered picture of a cell (e.g. ``heatmap``), paths relative to the site root;
    ``scale`` names its :class:`ColourScale`, ``range`` is the value range its colours span
    when the map shares a scale with others (``""`` when it has its own)."""

    key: str
    label: str
    src: str
    thumb: str
    alt: str
    size: Size = Size(0, 0)
    thumb_size: Size = Size(0, 0)
    scale: str = ""
    range: str = ""


@dataclass(frozen=True)
class LabelClass:
    """One class a segmentation shows: its index, name, share of the pixels, colour in the label
    map (CSS ``#rrggbb``) and whether the image's column explains it."""

    index: int
    label: str
    share: float
    colour: str
    explained: bool = False


@dataclass(frozen=True)
class Segmentation:
    """A segmentation model's prediction for one image: ``picture``, its label map in
    categorical colours over the model's crop (the explained class outlined); ``labels``, the
    label map as a lossless PNG whose pixel values are the class indices; ``classes``, the
    legend (the classes it shows, most pixels first, and the explained one)."""

    picture: Variant
    labels: str
    classes: list[LabelClass]


@dataclass(frozen=True)
class DetectedBox:
    """One detection a detector keeps: its class index and name, score, colour (CSS ``#rrggbb``,
    its class's in a label map), box ``[x0, y0, x1, y1]`` in the model input's pixels and whether
    the image's column explains it."""

    index: int
    label: str
    score: float
    colour: str
    box: list[float]
    explained: bool = False


@dataclass(frozen=True)
class Detected:
    """A detector's detections of one image: ``picture``, the model's crop with every kept
    detection drawn (the explained one outlined); ``boxes``, those detections, best first."""

    picture: Variant
    boxes: list[DetectedBox]


@dataclass(frozen=True)
class ModelRecord:
    """A model with its top-5 predictions per image id and the layers its techniques used;
    ``random_weights``: built with random weights (``weights = "none"``), so its classes are no
    predictions and every page that shows them says so. A segmentation model also has its
    ``segmentations`` per image id, and ``regions``: per image id whose target gives a region,
    the model's crop with that region outlined. A detector has its ``detections`` per image id,
    and ``regions`` holds its crop with the explained detection outlined (the others faint)."""

    id: str
    name: str
    description: str
    predictions: dict[str, list[Prediction]]
    layers: dict[str, str]
    random_weights: bool = False
    segmentations: dict[str, Segmentation] = field(default_factory=dict)
    regions: dict[str, Variant] = field(default_factory=dict)
    task: str = "classification"  # what it does (galleryvis.tasks): compare pages set models of one task side by side
    detections: dict[str, Detected] = field(default_factory=dict)


@dataclass(frozen=True)
class TechniqueRecord:
    """A gallery row group: one technique (registry ``name``) with its resolved parameters."""

    id: str
    name: str
    title: str
    family: str
    params: dict[str, Any]
    description_md: str
    paper: str
    kind: str = ""  # the registry's display kind: gradient, cam, signed or image
    group: str = ""  # the registry's table group ("" = the one of its kind)


@dataclass(frozen=True)
class ColourScale:
    """A colour bar: ``stops`` are CSS colours from low to high; ``low`` / ``middle`` / ``high``
    say what each end means (``middle`` only for signed scales)."""

    key: str
    colormap: str
    stops: list[str]
    quantity: str
    low: str
    high: str
    middle: str = ""


@dataclass(frozen=True)
class Concept:
    """One concept of a concept cell (:mod:`galleryvis.attribution.concepts`): the layer's
    ``channel``, its signed ``share`` of the layer's relevance, the target's confidence ``drop``
    when the channel is zeroed (None: not measured), its conditional map ``picture`` and the
    viewer's ``values`` (a script, see viewer.js)."""

    channel: int
    share: float
    drop: float | None
    picture: Variant
    values: str = ""


@dataclass(frozen=True)
class Cell:
    """The result of one (model, image, technique): its pictures, scores, or its error."""

    model_id: str
    image_id: str
    technique_id: str
    target_index: int | None
    target_label: str
    status: str  # "ok" | "failed"
    variants: list[Variant] = field(default_factory=list)
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    trace: list[float] = field(default_factory=list)
    plot: str = ""  # relative path of a small SVG/PNG plot (objective or metric curves)
    curves: dict[str, list[float]] = field(default_factory=dict)  # e.g. deletion / insertion
    values: str = ""  # relative path of the map's values for the viewer (a script, see viewer.js)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it was not computed
    text: bool = False  # its target is an image-text model's free text (target_label names it), not a class
    concepts: list[Concept] = field(default_factory=list)  # a concept cell's concepts, most relevant first
    random_drop: float | None = None  # a concept cell's median confidence drop for random channels
    random_channels: int = 0  # how many random channels that median is over


@dataclass(frozen=True)
class Appearance:
    """A concept in one cell's top-k: the image, the class the cell explains, the concept's rank
    there (1: most relevant), its share, drop and conditional map (the cell's picture)."""

    image_id: str
    target_index: int | None
    target_label: str
    rank: int
    share: float
    drop: float | None
    picture: Variant
    values: str = ""


@dataclass(frozen=True)
class ClassShare:
    """A class a concept matters for: how many of the images explaining it have the concept in
    their top-k, and its largest share there."""

    index: int | None
    label: str
    images: int
    share: float


@dataclass(frozen=True)
class ReferenceExample:
    """A concept's reference example: the reference file's ``name``, the concept's ``value`` on
    it (its share of the image's relevance, or of its activation, at the layer), the ``box``
    where the concept's relevance lies in the model's input (``[row0, row1, col0, col1]``,
    inclusive) and the ``picture`` of that part of the photo."""

    name: str
    value: float
    box: list[int]
    picture: Variant


@dataclass(frozen=True)
class AtlasConcept:
    """One entry of a concept atlas: the ``channel``, its mean confidence ``drop`` over the cells
    that have it in their top-k and the mean of those cells' random-channel medians
    (``random_drop``), its ``appearances`` (largest share first), the ``classes`` it matters for
    and its ``feature`` visualization (a filter visualization cell of that channel and layer, if
    the gallery has one; ``feature_technique`` its row); its reference examples, best first: the
    ``most_relevant`` (relevance maximization) and the ``most_active`` (activation maximization)."""

    channel: int
    drop: float | None
    random_drop: float | None
    appearances: list[Appearance]
    classes: list[ClassShare]
    feature: Variant | None = None
    feature_technique: str = ""
    most_relevant: list[ReferenceExample] = field(default_factory=list)
    most_active: list[ReferenceExample] = field(default_factory=list)


@dataclass(frozen=True)
class Atlas:
    """The concept atlas of one model and concept row (one layer): every concept in some image's
    top-k, largest mean drop first."""

    model_id: str
    technique_id: str
    layer: str
    random_channels: int
    concepts: list[AtlasConcept]


@dataclass(frozen=True)
class Ranking:
    """A model's techniques ranked by insertion - deletion AUC (baselines included)."""

    model_id: str
    rows: list[dict[str, Any]]
    protocol: str


@dataclass(frozen=True)
class MetricColumn:
    """A column of a :class:`MetricTable`: the metric's ``key`` in :attr:`Cell.metrics`, its
    ``category`` (faithfulness, robustness, ...) and which way is ``better`` ("higher" or "lower")."""

    key: str
    category: str
    better: str


@dataclass(frozen=True)
class MetricValue:
    """A technique's value of one metric on one model: the ``mean`` of its cells' values, the
    number of ``images`` they cover, its ``rank`` in the column (1 = best; means equal to the 4
    decimals the pages show share the better rank: 1, 1, 3) and whether it is the column's ``best`` (only where two or more have a value)."""

    mean: float
    images: int
    rank: int
    best: bool


@dataclass(frozen=True)
class MetricAgreement:
    """How far the ``metrics`` of one ``category`` agree on the ranking of a model's techniques:
    ``tau``, the mean of Kendall's tau-b between each pair of them over the ``techniques`` both
    rank (1: the same order, 0: unrelated, -1: reversed; each metric turned so higher is better)."""

    category: str
    metrics: list[str]
    tau: float
    techniques: int


@dataclass(frozen=True)
class MetricTable:
    """A model's metrics table: ``columns`` by category, ``rows``: technique id -> metric key ->
    its value (a metric the technique lacks is absent); ``images``: the gallery's image count;
    ``agreement``: for each category of two metrics or more, whether they rank the techniques alike."""

    model_id: str
    images: int
    columns: list[MetricColumn]
    rows: dict[str, dict[str, MetricValue]]
    agreement: list[MetricAgreement] = field(default_factory=list)


@dataclass(frozen=True)
class Gallery:
    """Everything a site shows."""

    title: str
    description_md: str
    images: list[ImageRecord]
    models: list[ModelRecord]
    techniques: list[TechniqueRecord]
    cells: list[Cell]
    rankings: list[Ranking] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, ColourScale] = field(default_factory=dict)
    scaling: str = ""  # how the maps are scaled, in a sentence
    base_url: str = ""  # the published site's address; gallery.md links pages there
    build: dict[str, Any] = field(default_factory=dict)  # provenance: versions, device, seeds, hashes
    downloads: dict[str, str] = field(default_factory=dict)  # model id -> zip of its raw maps
    #: ``[metrics] compute``'s metrics: name -> (question it answers, "higher" or "lower" is better)
    metric_notes: dict[str, list[str]] = field(default_factory=dict)
    #: per model, each scored technique's metrics averaged over the images, ranked per metric
    metric_tables: list[MetricTable] = field(default_factory=list)
    atlases: list[Atlas] = field(default_factory=list)  # one per model and concept row

    @cached_property
    def _index(self) -> dict[tuple[str, str, str], Cell]:
        return {(c.model_id, c.image_id, c.technique_id): c for c in self.cells}

    def cell(self, model_id: str, image_id: str, technique_id: str) -> Cell | None:
        """The cell for that triple, or None when it was not computed."""
        return self._index.get((model_id, image_id, technique_id))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for build.json and tests)."""
        return asdict(self)

    def to_json(self) -> bytes:
        """The records as :data:`RECORDS_FILE` holds them: without ``summary`` (this build's
        counts, which build.json has), so an unchanged rebuild writes the same bytes; a model's
        ``segmentations``, ``regions`` and ``detections`` only when it has some, ``metric_notes``,
        ``metric_tables``, ``atlases`` and a cell's ``concepts`` likewise."""
        data = replace(self, summary={}).to_dict()
        for key in ("metric_notes", "metric_tables", "atlases"):
            if not data[key]:
                del data[key]
        for cell in data["cells"]:  # a concept cell's own fields only where it has them
            if not cell["concepts"]:
                for key in _CONCEPT_FIELDS:
                    del cell[key]
        for model in data["models"]:  # a segmentation's and a detector's own fields only where it has them
            for key in ("segmentations", "regions", "detections"):
                if not model[key]:
                    del model[key]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gallery:
        """The inverse of :meth:`to_dict` (tuples come back as lists, missing keys as defaults)."""
        return _load(cls, d)


def _load(hint: Any, value: Any) -> Any:
    """``value`` (plain JSON data) as type ``hint``: records, and lists and dicts of them, rebuilt
    from their field types."""
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _load(hints[f.name], value[f.name])
                       for f in dataclasses.fields(hint) if f.name in value})
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and value is not None:  # an optional record
        inner = [a for a in args if a is not type(None)]
        return _load(inner[0], value) if len(inner) == 1 else value
    if typing.get_origin(hint) is list:
        return [_load(args[0], v) for v in value]
    if typing.get_origin(hint) is dict:
        return {k: _load(args[1], v) for k, v in value.items()}
    return value
