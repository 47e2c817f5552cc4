"""The manifest: TOML -> frozen dataclasses, with every problem collected into one ManifestError.

A manifest names images × models × techniques plus gallery and metrics settings
(``docs/manifest.md`` documents every field). :func:`load_manifest` reads a file,
:func:`parse_manifest` validates already-parsed data, :func:`default_manifest` is the
gallery shipped inside the package. Checks that need a loaded model (layer names, class
indices, class names) live in :func:`check_against_models`.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import glob
import importlib.resources
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, NamedTuple, TypeVar

from galleryvis import registry, tasks
from galleryvis.config import schema
from galleryvis.errors import ManifestError
from galleryvis.storage.fileio import url_problem, url_scheme
from galleryvis.tasks import OPT_IN

# the schema's choices as types (a test checks that they agree)
Device = Literal["auto", "cpu", "cuda", "mps"]
Executor = Literal["local", "ray"]
Scale = Literal["per-map", "per-image", "per-row"]
Substrate = Literal["zero", "black", "blur"]
DEVICES: tuple[str, ...] = schema.field("gallery", "device").choices
EXECUTORS: tuple[str, ...] = schema.field("gallery", "executor").choices
SCALES: tuple[str, ...] = schema.field("gallery", "scale").choices
#: What a glob keeps; files with other suffixes (README.md, .DS_Store) are skipped.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_FACTORY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_DEFAULT_LABEL = "default manifest"


class _NameOnly(NamedTuple):
    """Just what a model source reads of an entry while the entry is being parsed."""

    name: str
    weights: str | None
    factory: str | None
    seed: int = 0
    source: str | None = None
    prompts: tuple[str, ...] | str | None = None


def _known(name: str, source: str | None = None) -> bool:
    """Whether the source that would build a model called ``name`` knows it (asking only that
    source: a bundled name never imports torchvision)."""
    from galleryvis import sources

    return sources.source_for(_NameOnly(name, None, None, source=source)).knows(sources.bare_name(name))


_Spec = TypeVar("_Spec")


def _declared(section: str) -> Callable[[type[_Spec]], type[_Spec]]:
    """A frozen dataclass of ``section``'s keys whose defaults are the schema's ``value``s: the
    class writes each key's name and type only. Its other fields (where the entry was written)
    need defaults of their own; a key missing from the class is an error at import."""

    def make(cls: type[_Spec]) -> type[_Spec]:
        missing = set(schema.keys(section)) - set(cls.__annotations__)
        if missing:
            raise TypeError(f"{cls.__name__} lacks the declared keys {sorted(missing)}")
        for f in schema.SECTIONS[section]:
            if f.value is not schema.NO_VALUE:
                setattr(cls, f.key, field(default_factory=functools.partial(dict, f.value))
                        if isinstance(f.value, dict) else f.value)
        return dataclass(frozen=True)(cls)

    return make


class FreeText(NamedTuple):
    """An image-text model's target given as a table with a text, ``{ text = "a red car" }``:
    the similarity of the image with any text, not only a prompt."""

    text: str


class Region(NamedTuple):
    """An image target given as a table with a region, ``{ class = "dog", mask = "dog-mask.png" }``:
    the class (an index, a name, or None for the top-1 class) and the binary image, the photo's
    size, of the pixels a segmentation model's class is explained over."""

    cls: int | str | None
    mask: Path


class DetectionTarget(NamedTuple):
    """A detector's target: the detection of class ``cls`` (an index, a name, or None for any)
    that matches ``box`` (``(x0, y0, x1, y1)`` in the photo's pixels, ``{ class = "dog", box =
    [...] }``) best, or without a box its ``rank``-th highest-scoring one (``top = K`` makes one
    image per rank)."""

    cls: int | str | None
    box: tuple[float, float, float, float] | None = None
    rank: int = 1


@_declared("images")
class ImageSpec:
    """One input image file (a glob in the manifest becomes one ImageSpec per file).

    ``target`` is a class index, a class name from the model's labels, None (top-1), a
    :class:`Region` (a segmentation class over a given region) or a :class:`FreeText` (an
    image-text model's similarity with a text) or a :class:`DetectionTarget` (a detector's
    detection matching a box, or one of its ``top`` best; ``top``: the entry's K, None when not given).
    ``mask`` (a binary image the photo's size) or ``box`` (boxes ``(x0, y0, x1, y1)`` in the
    photo's pixels) says where the object is, checked against the photo; None when not given.
    ``field`` names the manifest entry it came from, e.g. ``images[2]``.
    """

    path: Path
    target: int | str | Region | FreeText | DetectionTarget | None
    top: int | None
    mask: Path | None
    box: tuple[tuple[float, float, float, float], ...] | None
    field: str = ""


@_declared("models")
class ModelSpec:
    """One model column.

    ``weights``: None (not given: ``DEFAULT`` for named models, whatever the factory returns
    for factory models), ``"DEFAULT"``, ``"none"`` (random init), a torchvision weights enum
    member name (``"IMAGENET1K_V2"``) or an absolute path to a local weights file. ``seed``
    seeds torch's generator while the model is built (its random initialization).
    ``layers`` maps technique name -> dotted module name (or names, for multi-layer
    techniques). ``id`` is unique within a manifest and defaults to ``name``.
    """

    name: str
    weights: str | None
    factory: str | None
    seed: int
    source: str | None
    labels: Path | None
    size: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    layers: Mapping[str, str | tuple[str, ...]]
    id: str
    prompts: tuple[str, ...] | str | None
    task: str | None
    score_threshold: float | None
    max_detections: int | None
    field: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.name)


@_declared("techniques")
class TechniqueSpec:
    """One technique row: a registered technique with its full (defaults-merged) parameters.

    ``id`` is unique within a manifest and defaults to ``name``, so one technique can be
    listed twice with different parameters. ``given``: the parameters the manifest wrote.
    ``target``: the row's own class or text (None: each image's target).
    """

    name: str
    params: Mapping[str, Any]
    id: str
    field: str = ""
    layer: str | tuple[str, ...] | None
    scale: Scale | None
    given: frozenset[str] = frozenset()
    target: int | str | FreeText | None

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.name)


@_declared("gallery")
class GallerySpec:
    """Gallery-wide settings; ``description`` is Markdown, ``output`` an absolute folder,
    ``cache`` a folder or an fsspec URL (None: ``.galleryvis-cache`` beside the manifest),
    ``num_gpus`` None for 1 per Ray worker on a GPU, else 0; ``num_cpus``: CPUs Ray reserves per
    worker (its torch threads are the driver's, so its pictures are the local build's)."""

    title: str
    description: str
    output: Path
    device: Device
    colormap: str | None
    alpha: float
    scale: Scale
    outlier_perc: float
    raw_maps: bool
    base_url: str
    plugins: tuple[str, ...]
    cache: Path | str | None
    executor: Executor
    num_gpus: float | None
    ray_workers: int
    num_cpus: int


@_declared("metrics")
class MetricsSpec:
    """Faithfulness metrics: deletion/insertion curves (``steps`` points, pixels replaced by
    ``substrate``), ROAD at ``road_percentile`` % removed (both orders) and the
    cascading-randomization sanity check; ``compute``: further metrics of :mod:`galleryvis.metrics` by
    name (checked when the build loads its models)."""

    enabled: bool
    deletion_insertion: bool
    sanity: bool
    steps: int
    substrate: Substrate
    road: bool
    road_percentile: float
    sanity_steps: int
    sanity_techniques: tuple[str, ...] | None
    compute: tuple[str, ...]


@_declared("concepts")
class ConceptsSpec:
    """The concept atlases' settings: ``reference``, the files of the reference set each
    concept's examples come from (a glob expanded, sorted); None: the gallery's own images."""

    reference: tuple[Path, ...] | None


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``path`` is None for the embedded default; ``root`` is the folder
    relative paths were resolved against."""

    path: Path | None
    root: Path
    gallery: GallerySpec
    images: tuple[ImageSpec, ...]
    models: tuple[ModelSpec, ...]
    techniques: tuple[TechniqueSpec, ...]
    metrics: MetricsSpec
    concepts: ConceptsSpec = field(default_factory=ConceptsSpec)

    @property
    def label(self) -> str:
        """How messages name this manifest: its file name, or 'default manifest'."""
        return self.path.name if self.path is not None else _DEFAULT_LABEL


# --- reading ---------------------------------------------------------------------------------


def load_manifest(path: Path) -> Manifest:
    """Read and validate the TOML manifest at ``path``; relative paths resolve beside it."""
    path = Path(path)
    label = path.name or str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ManifestError([f"{label}: no such file ({path})"]) from None
    except IsADirectoryError:
        raise ManifestError([f"{label}: is a folder, not a TOML file ({path})"]) from None
    except UnicodeDecodeError as exc:
        raise ManifestError([f"{label}: not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise ManifestError([f"{label}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError([f"{label}: invalid TOML: {exc}"]) from None
    return parse_manifest(data, path=path, root=path.absolute().parent)


def default_manifest() -> Manifest:
    """The gallery shipped with galleryvis: its photos, EfficientNet-Lite0, every attribution
    technique. Output goes to ``site/`` under the current working directory."""
    text = importlib.resources.files("galleryvis").joinpath("data", "default.toml").read_text("utf-8")
    manifest = parse_manifest(tomllib.loads(text), path=None, root=_default_images_dir())
    gallery = dataclasses.replace(manifest.gallery, output=Path.cwd() / "site")
    return dataclasses.replace(manifest, gallery=gallery)


def _default_images_dir() -> Path:
    """The packaged photos (``input_images/`` installed as ``galleryvis.default_images``); in an
    uninstalled source checkout, the repository's ``input_images/``."""
    try:
        return Path(str(importlib.resources.files("galleryvis.default_images")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "input_images"


def parse_manifest(data: Mapping[str, Any], *, path: Path | None, root: Path) -> Manifest:
    """Validate parsed TOML ``data``; relative paths resolve against ``root``.

    First every key is read as the schema declares it (:meth:`_Parser.read`: types, ranges,
    choices, files; no torch, no model source, no plug-in); then the model sources check names
    and weights, the plug-ins load, and only then are technique names, layers and parameters
    checked, wherever the tables stand in the file. Raises ManifestError listing every problem
    found, each as ``file: field: message``.
    """
    p = _Parser(path.name if path is not None else _DEFAULT_LABEL, Path(root).absolute())
    draft = p.read(data)
    models, techniques = p.resolve(draft)
    if p.errors:
        raise ManifestError(list(dict.fromkeys(p.errors)))
    return Manifest(path, p.root, draft.gallery, draft.images, models, techniques, draft.metrics, draft.concepts)


def check_against_models(manifest: Manifest, adapters: Mapping[str, Any]) -> list[str]:
    """Problems only a loaded model reveals, one message each (empty list when all is well).

    ``adapters`` maps model id -> an object with ``labels`` (class names, maybe empty),
    ``num_classes`` and ``module_names``. Checks that every layer in ``models[i].layers``
    exists, and that each image target is a valid class index or a known class name
    (case-insensitive). Models missing from ``adapters`` are skipped, and so are those whose
    ``task`` a gallery cannot show yet (:data:`galleryvis.tasks.GALLERY_TASKS`; one message each).
    """
    label = manifest.label
    errors: list[str] = []
    for model in manifest.models:
        adapter = adapters.get(model.id)
        if adapter is None:
            continue
        task = getattr(adapter, "task", "classification")
        if task != "detection":
            keys = {(e.field, key): what for e in manifest.images for key, what in _detection_keys(e)}
            errors += [f"{label}: {where}.{key}: {what} is for detection models; model {model.id!r} is a {task} model"
                       for (where, key), what in keys.items()]
        if task not in tasks.GALLERY_TASKS:
            errors.append(f"{label}: {model.field}.task: galleries of {task} models are not built yet; explain "
                          f"model {model.id!r} in Python with galleryvis.attribute (docs/tasks.md)")
            continue
        modules = sorted(adapter.module_names)
        for tech, layers in model.layers.items():
            for layer in (layers,) if isinstance(layers, str) else layers:
                if layer not in adapter.module_names:
                    errors.append(
                        f"{label}: {model.field}.layers.{tech}: model {model.id!r} has no layer "
                        f"{layer!r}{registry.suggest(layer, modules)} "
                        f"(`galleryvis layers {model.name}` lists them)"
                    )
        for tech in manifest.techniques:
            for layer in (tech.layer,) if isinstance(tech.layer, str) else tech.layer or ():
                if layer not in adapter.module_names:
                    errors.append(
                        f"{label}: {tech.field}.layer: model {model.id!r} has no layer "
                        f"{layer!r}{registry.suggest(layer, modules)} "
                        f"(`galleryvis layers {model.name}` lists them)"
                    )
        lowered = {name.lower(): name for name in adapter.labels}
        reported: set[tuple[str, int | str]] = set()
        for entry in (*manifest.images, *manifest.techniques):
            target = entry.target.cls if isinstance(entry.target, (Region, DetectionTarget)) else entry.target
            where = f"{label}: {entry.field}.target"
            if isinstance(entry.target, Region) and task != "segmentation" and (entry.field, "mask") not in reported:
                reported.add((entry.field, "mask"))
                errors.append(f"{where}.mask: a region is for segmentation models; model {model.id!r} is a {task} model")
            if isinstance(entry.target, FreeText):
                if task != "image-text" and (entry.field, "text") not in reported:
                    reported.add((entry.field, "text"))
                    errors.append(f"{where}.text: a text is for image-text models; model {model.id!r} is a {task} model")
                continue
            if target is None or (entry.field, target) in reported:
                continue
            reported.add((entry.field, target))
            if isinstance(target, int) and target >= adapter.num_classes:
                errors.append(
                    f"{where}: class index {target} is out of range for model {model.id!r} "
                    f"({adapter.num_classes} classes: 0..{adapter.num_classes - 1})"
                )
            elif isinstance(target, str) and not adapter.labels:
                errors.append(
                    f"{where}: model {model.id!r} has no class names, so target {target!r} "
                    "cannot be looked up (give the model a `labels` file, or use a class index)"
                )
            elif isinstance(target, str) and target.lower() not in lowered:
                hint = registry.suggest(target, adapter.labels, fold_case=True)
                errors.append(f"{where}: model {model.id!r} has no class {target!r}{hint}")
    return errors


def _detection_keys(entry: ImageSpec) -> list[tuple[str, str]]:
    """The keys of an image entry that only a detector reads, as (key, what it gives): a target's
    box, ``top``."""
    out = []
    if isinstance(entry.target, DetectionTarget) and entry.target.box is not None:
        out.append(("target.box", "a box target"))
    if entry.top is not None:
        out.append(("top", "top = K (a detector's K best detections)"))
    return out


# --- validation ------------------------------------------------------------------------------


def _toml_type(value: Any) -> str:
    """A value's TOML type name and (shortened) value, for messages."""
    kinds = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (list, "array"),
             (dict, "table"), (datetime.date, "date"), (datetime.time, "time"))
    kind = next((k for t, k in kinds if isinstance(value, t)), type(value).__name__)
    text = repr(value)
    return f"{kind} {text[:40] + '...' if len(text) > 43 else text}"


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


#: a reader's answer for a value it reported as wrong: the key keeps its default
_BAD: Any = object()


@dataclass(frozen=True)
class _Entry:
    """One ``[[models]]`` or ``[[techniques]]`` table as read: every declared key's value (its
    default where not written), the keys written, and whether reading it found no problem."""

    where: str
    values: Mapping[str, Any]
    written: frozenset[str]
    ok: bool


class _Draft(NamedTuple):
    """A manifest read against the schema, before the model sources, plug-ins and registry
    check what only they know (``techniques`` None: no ``[[techniques]]`` section)."""

    gallery: GallerySpec
    images: tuple[ImageSpec, ...]
    models: tuple[_Entry, ...]
    techniques: tuple[_Entry, ...] | None
    metrics: MetricsSpec
    concepts: ConceptsSpec


class _Parser:
    """Walks the parsed TOML, collecting ``file: field: message`` errors."""

    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        self.root = root
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.label}: {where}: {message}" if where else f"{self.label}: {message}")

    # the two steps

    def read(self, data: Mapping[str, Any]) -> _Draft:
        """Every section read against the schema; imports neither torch nor a plug-in."""
        top = self.table(data, "", tuple(schema.SECTIONS))
        return _Draft(self.gallery(top.get("gallery", {})), self.images(top.get("images")),
                      self.models(top.get("models")), self.techniques(top.get("techniques")),
                      self.metrics(top.get("metrics", {})), self.concepts(top.get("concepts", {})))

    def resolve(self, draft: _Draft) -> tuple[tuple[ModelSpec, ...], tuple[TechniqueSpec, ...]]:
        """The model and technique specs of ``draft``: model names and weights asked of the model
        sources, then the plug-ins loaded, then every technique name checked against the registry."""
        sourced = [self.model_source(entry) for entry in draft.models]
        self.load_plugins(draft.gallery.plugins)
        models: list[ModelSpec] = []
        for entry, source in zip(draft.models, sourced):
            spec = self.model(entry, source)
            if spec is not None and any(s.id == spec.id for s in models):
                self.error(spec.field, f"duplicate model id {spec.id!r}: give one of them a distinct "
                                       '`id = "..."` to show the same model twice')
            elif spec is not None:
                models.append(spec)
        techniques = self.resolve_techniques(draft.techniques)
        for name in draft.metrics.sanity_techniques or ():
            if name not in registry.names("attribution"):
                self.error("metrics.sanity_techniques",
                           f"unknown technique {name!r}{registry.suggest(name, registry.names('attribution'))}")
        return tuple(models), techniques

    # generic readers

    def table(self, value: Any, where: str, allowed: tuple[str, ...], noun: str = "key") -> dict[str, Any]:
        """``value`` as a table, reporting unknown keys; {} (with an error) if it is not one."""
        if not isinstance(value, Mapping):
            self.error(where, f"expected a table, got {_toml_type(value)}")
            return {}
        for key in value:
            if key not in allowed:
                hint = registry.suggest(key, allowed) or f" (allowed: {', '.join(allowed)})"
                self.error(f"{where}.{key}" if where else str(key), f"unknown {noun}{hint}")
        return {k: v for k, v in value.items() if k in allowed}

    def array_of_tables(self, value: Any, where: str, header: str) -> list[Any]:
        if isinstance(value, list):
            return value
        self.error(where, f"expected an array of tables ({header} sections), got {_toml_type(value)}")
        return []

    def section(self, name: str, value: Any, where: str) -> tuple[dict[str, Any], frozenset[str], bool]:
        """``value`` read as a table of section ``name``: each written key by its declared reader,
        every other one at its declared default (:data:`schema.NO_VALUE` for a required key);
        also the keys written, and whether all of it read without a problem."""
        ok = len(self.errors)
        table = {k: v for k, v in self.table(value, where, schema.keys(name)).items() if v is not None}
        values = {}
        for f in schema.SECTIONS[name]:
            got = getattr(self, f"read_{f.read}")(table[f.key], f"{where}.{f.key}", f) if f.key in table else _BAD
            values[f.key] = f.value if got is _BAD else got
        return values, frozenset(table), len(self.errors) == ok

    # readers: a written value (never None) -> the spec's value, or _BAD after reporting it

    def read_string(self, value: Any, where: str, f: schema.Field) -> Any:
        if not isinstance(value, str):
            self.error(where, f"expected a string, got {_toml_type(value)}")
            return _BAD
        if not value.strip():
            self.error(where, "must not be empty")
            return _BAD
        return value

    def read_text(self, value: Any, where: str, f: schema.Field) -> Any:
        if not isinstance(value, str):
            self.error(where, f"expected a string, got {_toml_type(value)}")
            return _BAD
        return value

    def read_choice(self, value: Any, where: str, f: schema.Field) -> Any:
        value = self.read_string(value, where, f)
        if value is not _BAD and value not in f.choices:
            self.error(where, f"must be one of {', '.join(f.choices)}, got {value!r}"
                              f"{registry.suggest(value, f.choices)}")
            return _BAD
        return value

    def read_integer(self, value: Any, where: str, f: schema.Field) -> Any:
        low, high = f.range  # type: ignore[misc]
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(where, f"expected an integer, got {_toml_type(value)}")
            return _BAD
        if not low <= value <= high:
            self.error(where, f"must be from {low} to {high}, got {value}")
            return _BAD
        return value

    def read_number(self, value: Any, where: str, f: schema.Field) -> Any:
        low, high = f.range  # type: ignore[misc]
        number = _finite(value)
        if number is None or not low <= number <= high:
            self.error(where, f"expected a number from {low:g} to {high:g}, got {_toml_type(value)}")
            return _BAD
        return number

    def read_boolean(self, value: Any, where: str, f: schema.Field) -> Any:
        if not isinstance(value, bool):
            self.error(where, f"expected true or false, got {_toml_type(value)}")
            return _BAD
        return value

    def read_modules(self, value: Any, where: str, f: schema.Field) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.error(where, f"expected a list of module names or .py files, got {_toml_type(value)}")
            return _BAD
        return tuple(value)

    def read_names(self, value: Any, where: str, f: schema.Field) -> Any:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(where, f"expected an array of technique names, got {_toml_type(value)}")
            return _BAD
        return tuple(value)

    def read_triple(self, value: Any, where: str, f: schema.Field) -> Any:
        numbers = [_finite(v) for v in value] if isinstance(value, list) else []
        if len(numbers) != 3 or None in numbers:
            self.error(where, f"expected an array of 3 numbers (R, G, B), got {_toml_type(value)}")
            return _BAD
        return numbers[0], numbers[1], numbers[2]

    def read_positive_triple(self, value: Any, where: str, f: schema.Field) -> Any:
        numbers = self.read_triple(value, where, f)
        if numbers is not _BAD and any(v <= 0 for v in numbers):
            self.error(where, f"every value must be greater than 0, got {value}")
            return _BAD
        return numbers

    def read_boxes(self, value: Any, where: str, f: schema.Field) -> Any:
        """A box ``[x0, y0, x1, y1]`` or a list of them, each with x0 < x1 and y0 < y1."""
        rows = value if isinstance(value, list) and value and all(isinstance(v, list) for v in value) else [value]
        boxes = []
        for row in rows:
            numbers = [_finite(v) for v in row] if isinstance(row, list) else []
            if len(numbers) != 4 or None in numbers:
                self.error(where, f"expected a box [x0, y0, x1, y1] (4 numbers) or a list of boxes, got {row!r}")
                return _BAD
            x0, y0, x1, y1 = numbers
            if not (x0 < x1 and y0 < y1):
                self.error(where, f"box {row} must have x0 < x1 and y0 < y1")
                return _BAD
            boxes.append((x0, y0, x1, y1))
        return tuple(boxes)

    def read_file(self, value: Any, where: str, f: schema.Field) -> Any:
        """A path that must name an existing file."""
        text = self.read_string(value, where, f)
        if text is _BAD:
            return _BAD
        path = self.path(text)
        problem = _file_problem(path)
        if problem:
            self.error(where, f"{f.key} file {text!r}: {problem}")
            return _BAD
        return path

    def read_table(self, value: Any, where: str, f: schema.Field) -> Any:
        if not isinstance(value, Mapping):
            self.error(where, f"expected a table, got {_toml_type(value)}")
            return _BAD
        return dict(value)

    def read_factory(self, value: Any, where: str, f: schema.Field) -> Any:
        text = self.read_string(value, where, f)
        if text is not _BAD and not _FACTORY.fullmatch(text):
            self.error(where, f"expected 'package.module:function', got {text!r}")
            return _BAD
        return text

    def read_layer(self, value: Any, where: str, f: schema.Field) -> Any:
        """A module name, or an array of them (a tuple)."""
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
            return tuple(value)
        self.error(where, f"expected a module name such as 'layer4' or an array of them, got {_toml_type(value)}")
        return _BAD

    def read_prompts(self, value: Any, where: str, f: schema.Field) -> Any:
        """An image-text model's prompts: a non-empty array of distinct texts, or "imagenet"."""
        if value == "imagenet":
            return value
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            self.error(where, f'expected an array of texts or "imagenet", got {_toml_type(value)}')
            return _BAD
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            self.error(where, f"each prompt must be distinct (it is a class); repeated: {repeated}")
            return _BAD
        return tuple(value)

    def read_target(self, value: Any, where: str, f: schema.Field) -> Any:
        """A class index, a class name, or None for "top1"; a table ``{ class = ..., mask = ... }``
        (a :class:`Region` when it gives a mask, else its class), ``{ class = ..., box = [...] }``
        (a :class:`DetectionTarget`) or ``{ text = ... }`` (a :class:`FreeText`)."""
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"class", "mask", "text", "box"})
            if unknown:
                self.error(where, f"unknown key {unknown[0]!r} in a target table (keys: class, mask, box, text)")
                return _BAD
            if "text" in value:
                return self.free_text(value, where)
            cls = self.read_target(value.get("class", "top1"), f"{where}.class", f)
            if "box" in value:
                if "mask" in value:
                    self.error(where, "a target table gives a mask (segmentation) or a box (detection), not both")
                    return _BAD
                box = self.read_boxes(value["box"], f"{where}.box", f)
                if box is not _BAD and len(box) != 1:
                    self.error(f"{where}.box", f"expected one box [x0, y0, x1, y1], got {len(box)}")
                    return _BAD
                return _BAD if cls is _BAD or box is _BAD else DetectionTarget(cls, box[0])
            mask = value.get("mask")
            if cls is _BAD or mask is None:
                return cls
            if not isinstance(mask, str) or not mask.strip():
                self.error(f"{where}.mask", f"expected the path of a binary image, got {_toml_type(mask)}")
                return _BAD
            return Region(cls, self.path(mask))
        if isinstance(value, str) and value.strip().lower() == "top1":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            self.error(where, f'expected a class index, a class name or "top1", got {_toml_type(value)}')
            return _BAD
        if isinstance(value, int) and value < 0:
            self.error(where, f"class index must be 0 or more, got {value}")
            return _BAD
        if isinstance(value, str) and not value.strip():
            self.error(where, 'must not be empty (use "top1" for the predicted class)')
            return _BAD
        return value

    def free_text(self, value: Mapping[str, Any], where: str) -> Any:
        """The :class:`FreeText` of a target table ``{ text = "..." }`` (alone: no class, no mask)."""
        text = value["text"]
        if len(value) > 1:
            self.error(where, "a target table gives a text, or a class (and a mask or a box), not both")
        elif not isinstance(text, str) or not text.strip():
            self.error(f"{where}.text", f"expected a non-empty text to compare the image with, got {_toml_type(text)}")
        else:
            return FreeText(text)
        return _BAD

    def path(self, text: str) -> Path:
        """``text`` as a path: ``~`` expanded, relative paths joined to the manifest's folder."""
        return self.root / os.path.expanduser(text)

    # sections, as read

    def gallery(self, value: Any) -> GallerySpec:
        where = "gallery"
        v, _, _ = self.section("gallery", value, where)
        text = str(v["output"])
        v["output"] = Path(os.path.normpath(self.path(text)))
        if url_problem(text):
            self.error(f"{where}.output", url_problem(text))
        else:
            self.check_output(v["output"], f"{where}.output", text)
        if v["colormap"] is not None:
            v["colormap"] = self.colormap(v["colormap"], f"{where}.colormap")
        if v["base_url"] and not re.fullmatch(r"https?://[^\s\"'<>]+", v["base_url"]):
            self.error(f"{where}.base_url", f"expected an http(s) address, got {v['base_url']!r}")
            v["base_url"] = ""
        v["base_url"] = v["base_url"].rstrip("/") + "/" if v["base_url"] else ""
        if v["cache"] is not None:
            v["cache"] = self.cache(v["cache"], f"{where}.cache")
        return GallerySpec(**v)

    def colormap(self, name: str, where: str) -> str | None:
        """The colormap as galleryvis spells it (any case is accepted); None if unknown."""
        from galleryvis.render.postprocess import COLORMAPS  # numpy and cmap, only when a colormap is named

        known = {c.lower(): c for c in COLORMAPS}
        if name.lower() not in known:
            self.error(where, f"unknown colormap {name!r}{registry.suggest(name.lower(), list(known))}; "
                              f"known: {', '.join(COLORMAPS)}")
            return None
        return known[name.lower()]

    def cache(self, text: str, where: str) -> Path | str:
        """``gallery.cache``: an fsspec URL as written, else a folder relative to the manifest."""
        if url_scheme(text) and url_scheme(text) != "file":
            from galleryvis.storage.cache import location_problem

            problem = location_problem(text)
            if problem:
                self.error(where, problem)
            return text
        return self.path(text.removeprefix("file://"))

    def check_output(self, output: Path, where: str, text: str) -> None:
        """Refuse output folders that a rebuild or ``clean`` could not safely replace."""
        try:
            target = output.resolve()
            if target.is_file():
                self.error(where, f"{text!r} is a file, not a folder")
            elif target == self.root.resolve() or target in self.root.resolve().parents:
                self.error(where, f"{text!r} is the manifest's folder or a folder above it; "
                                  "choose a subfolder such as 'site'")
        except (OSError, ValueError, RuntimeError) as exc:
            self.error(where, f"unusable output folder {text!r}: {exc}")

    def images(self, value: Any) -> tuple[ImageSpec, ...]:
        if value is None:
            self.error("images", "missing: add at least one [[images]] section with a `path`")
            return ()
        specs: dict[tuple[Path, Any], ImageSpec] = {}  # one spec per (file, target)
        for i, entry in enumerate(self.array_of_tables(value, "images", "[[images]]")):
            where = f"images[{i}]"
            v, written, _ = self.section("images", entry, where)
            if "path" not in written and isinstance(entry, Mapping):
                self.error(where, "missing required key 'path' (an image file or a glob such as 'photos/*.jpg')")
            if v["path"] is schema.NO_VALUE:
                continue
            paths = self.expand(v["path"], f"{where}.path")  # decoded by the pipeline (jobs.read_images)
            if v["mask"] is not None or v["box"] is not None:
                self.ground_truth(v, paths, where)
            if isinstance(v["target"], Region) and (
                    size := self.one_photo(v["path"], paths, f"{where}.target.mask", None)) is not None:
                self.mask_of(v["target"].mask, v["path"], size, f"{where}.target.mask")
            if isinstance(v["target"], DetectionTarget) and v["target"].box is not None and (
                    size := self.one_photo(v["path"], paths, f"{where}.target.box", None)) is not None:
                self.inside(v["target"].box, v["path"], size, f"{where}.target.box")
            for path in paths:
                for target in self.ranks(v["target"], v["top"], f"{where}.top"):
                    specs.setdefault((path, target), ImageSpec(path, target, v["top"], v["mask"], v["box"], where))
        if isinstance(value, list) and not value:
            self.error("images", "empty: add at least one [[images]] section with a `path`")
        return tuple(specs.values())

    def ground_truth(self, v: dict[str, Any], paths: list[Path], where: str) -> None:
        """Check an entry's ``mask`` or ``box`` against its one photo: a mask of the photo's size
        with an object pixel, boxes inside the photo."""
        key = "mask" if v["mask"] is not None else "box"
        if v["mask"] is not None and v["box"] is not None:
            self.error(f"{where}.box", "give the object's mask or its box, not both")
            return
        size = self.one_photo(v["path"], paths, f"{where}.{key}", f"{where}.path")
        if size is None:
            return
        if v["box"] is not None:
            for box in v["box"]:
                self.inside(box, v["path"], size, f"{where}.box")
            return
        self.mask_of(v["mask"], v["path"], size, f"{where}.mask")

    def inside(self, box: tuple[float, ...], text: str, size: tuple[int, int], where: str) -> None:
        """A box ``[x0, y0, x1, y1]`` inside the photo ``text`` of ``size``, or one error."""
        width, height = size
        if not (0 <= box[0] and 0 <= box[1] and box[2] <= width and box[3] <= height):
            self.error(where, f"box {list(box)} lies outside the photo {text!r} ({width} x {height} pixels)")

    def ranks(self, target: Any, top: int | None, where: str) -> list[Any]:
        """An entry's targets, one per image spec: ``target``, or with ``top = K`` the K best
        detections (of the target's class) as :class:`DetectionTarget` ranks 1 .. K."""
        if top is None:
            return [target]
        if isinstance(target, (Region, FreeText)) or (isinstance(target, DetectionTarget) and target.box is not None):
            what = "a box" if isinstance(target, DetectionTarget) else "a mask" if isinstance(target, Region) else "a text"
            self.error(where, f"top = K explains a detector's K best detections; its target gives {what}, "
                              "which names one")
            return [target]
        cls = target.cls if isinstance(target, DetectionTarget) else target
        return [DetectionTarget(cls, None, k) for k in range(1, top + 1)]

    def one_photo(self, text: str, paths: list[Path], where: str, path_where: str | None) -> tuple[int, int] | None:
        """The size of the one photo an entry's ``path`` (``text``) names, for what is checked
        against it at ``where``; None when its ``path`` has its own error, when it is a glob
        (reported at ``where``) or when the photo does not decode (reported at ``path_where``;
        None: the pipeline reports it)."""
        from PIL import Image, UnidentifiedImageError  # only when a manifest gives ground truth or a region

        if not paths:  # the path's own error is reported
            return None
        if _has_magic(text) or len(paths) != 1:
            self.error(where, f"needs `path` to name one image file, not the glob {text!r}")
            return None
        try:
            with Image.open(paths[0]) as photo:
                return photo.size
        except (OSError, UnidentifiedImageError) as exc:
            if path_where is not None:
                self.error(path_where, f"{text!r} is not a readable image: {exc}")
            return None

    def mask_of(self, mask: Path, text: str, size: tuple[int, int], where: str) -> None:
        """A binary image of the photo ``text``'s ``size`` with an object pixel, or one error."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(mask) as img:
                got, empty = img.size, img.convert("L").getbbox() is None
        except (OSError, UnidentifiedImageError) as exc:
            self.error(where, f"{mask.name!r} is not a readable image: {exc}")
            return
        if got != size:
            self.error(where, f"{mask.name!r} is {got[0]} x {got[1]} pixels, the photo {text!r} {size[0]} x {size[1]}")
        elif empty:
            self.error(where, f"{mask.name!r} has no object pixel (every pixel is 0)")

    def expand(self, text: str, where: str) -> list[Path]:
        """The image files ``text`` names: one file, or a glob's files with image suffixes."""
        if not _has_magic(text):
            path = self.path(text)
            problem = _file_problem(path)
            if problem and _is_dir(path):
                problem += f" (use a glob such as {text.rstrip('/') + '/*'!r} for the images in it)"
            if problem:
                self.error(where, f"{text!r}: {problem}")
                return []
            return [path]
        try:
            # root_dir keeps glob characters in the manifest's own folder name literal
            found = glob.glob(os.path.expanduser(text), root_dir=self.root, recursive=True)
            files = [m for m in sorted(self.root / f for f in found) if m.is_file()]
        except (OSError, ValueError) as exc:
            self.error(where, f"cannot search {text!r}: {exc}")
            return []
        images = [m for m in files if m.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            other = f"; only non-image files: {', '.join(m.name for m in files[:3])}" if files else ""
            self.error(where, f"no image file matches {text!r} (relative to {self.root}{other})")
        return images

    def models(self, value: Any) -> tuple[_Entry, ...]:
        if value is None:
            self.error("models", 'missing: add at least one [[models]] section, e.g. name = "resnet50"')
            return ()
        entries = []
        if isinstance(value, list) and not value:
            self.error("models", 'empty: add at least one [[models]] section, e.g. name = "resnet50"')
        for i, entry in enumerate(self.array_of_tables(value, "models", "[[models]]")):
            where = f"models[{i}]"
            v, written, ok = self.section("models", entry, where)
            if not {"name", "factory"} & written and isinstance(entry, Mapping):
                self.error(where, "missing required key 'name' (a torchvision model such as 'resnet50', "
                                  "'efficientnet_lite0', or a `factory`)")
            entries.append(_Entry(where, v, written, ok and bool({"name", "factory"} & written)))
        return tuple(entries)

    def techniques(self, value: Any) -> tuple[_Entry, ...] | None:
        if value is None:
            return None
        entries = []
        for i, entry in enumerate(self.array_of_tables(value, "techniques", "[[techniques]]")):
            where = f"techniques[{i}]"
            v, written, ok = self.section("techniques", entry, where)
            if "name" not in written and isinstance(entry, Mapping):
                self.error(where, "missing required key 'name' (`galleryvis techniques` lists them)")
            entries.append(_Entry(where, v, written, ok))
        return tuple(entries)

    def metrics(self, value: Any) -> MetricsSpec:
        v, _, _ = self.section("metrics", value, "metrics")
        return MetricsSpec(**v)

    def concepts(self, value: Any) -> ConceptsSpec:
        """``[concepts]``: the reference set's files, a glob expanded as an image path is (decoded
        by the build, which names a file that does not decode at ``concepts.reference``)."""
        v, _, _ = self.section("concepts", value, "concepts")
        if v["reference"] is not None:
            v["reference"] = tuple(self.expand(v["reference"], "concepts.reference")) or None
        return ConceptsSpec(**v)

    # what the model sources, the plug-ins and the registry know

    def model_source(self, entry: _Entry) -> tuple[str | None, str | None]:
        """An entry's model source and normalized weights, asked of the model sources."""
        v, where = entry.values, entry.where
        name = v["name"] if v["name"] is not schema.NO_VALUE else None
        source = self.source(v["source"], where, name)
        if name is not None and "factory" not in entry.written and not _known(name, source):
            from galleryvis import sources

            self.error(f"{where}.name", f"unknown model {name!r}{sources.close_names(name, source)} "
                                        "(any torchvision classification model, efficientnet_lite0 / 1 / 2, or "
                                        "a timm: / hf: model)")
        return source, self.weights(v["weights"], where, None if "factory" in entry.written else name or "", source)

    def model(self, entry: _Entry, source: tuple[str | None, str | None]) -> ModelSpec | None:
        """The spec of a model entry once the registry knows every technique its ``layers`` name."""
        ok = len(self.errors)
        v = dict(entry.values, source=source[0], weights=source[1])
        v["layers"] = self.layers(v["layers"], f"{entry.where}.layers")
        for key in ("score_threshold", "max_detections"):
            if v[key] is not None and v["task"] not in (None, "detection"):
                self.error(f"{entry.where}.{key}", f"only detection models take it, and task is {v['task']!r}")
        if not entry.ok or len(self.errors) > ok:
            return None
        if v["name"] is schema.NO_VALUE:
            v["name"] = v["factory"].rsplit(":", 1)[1].rsplit(".", 1)[-1]
        return ModelSpec(**v, field=entry.where)

    def source(self, given: str | None, where: str, name: str | None) -> str | None:
        """``source``, or the one the name's ``timm:`` / ``hf:`` prefix chooses; both must agree."""
        from galleryvis import sources

        prefixed = sources.prefixed_source(name or "")
        if given is not None and given not in sources.SOURCE_NAMES:
            self.error(f"{where}.source", f"unknown source {given!r}{registry.suggest(given, sources.SOURCE_NAMES)}; "
                                          f"use one of {', '.join(sources.SOURCE_NAMES)}")
            return None
        if given is not None and prefixed is not None and given != prefixed:
            self.error(f"{where}.source", f"source {given!r} contradicts the name {name!r}, a {prefixed} model")
            return None
        return given or prefixed

    def weights(self, text: str | None, where: str, name: str | None, source: str | None = None) -> str | None:
        """Normalized ``weights``: DEFAULT, none, an enum member name or an absolute path (a
        model folder too, for timm).

        ``name`` is the model name, or None for a factory model.
        """
        from galleryvis import sources

        if text is None:
            return None
        key = f"{where}.weights"
        if text.upper() in ("DEFAULT", "NONE"):
            if text.upper() == "DEFAULT" and name is None:
                self.error(key, 'a factory model takes a weights file path or "none", not "DEFAULT"')
            return "DEFAULT" if text.upper() == "DEFAULT" else "none"
        if text.lower().endswith(_WEIGHT_SUFFIXES) or any(c in text for c in "/\\~"):
            path = self.path(text)
            problem = "" if source == "timm" and path.is_dir() else _file_problem(path)
            if problem:
                self.error(key, f"weights file {text!r}: {problem}")
            return str(path)
        if name is not None and not _known(name, source):
            return None  # the missing or unknown name is reported already
        try:
            spec = _NameOnly(name or "", None, None if name is not None else "factory", source=source)
            return sources.source_for(spec).check_weights(name or "", text)
        except sources.ModelError as exc:
            self.error(key, str(exc))
            return None

    def load_plugins(self, specs: tuple[str, ...]) -> None:
        """Import the entry-point plug-ins and ``gallery.plugins`` (module names or .py files), so
        the techniques they register are known when the techniques are checked."""
        from galleryvis.config import plugins

        try:
            plugins.load_entry_points()
        except plugins.PluginError as exc:
            self.error("gallery.plugins", str(exc))
        for spec in specs:
            try:
                plugins.load(spec, self.root)
            except plugins.PluginError as exc:
                self.error("gallery.plugins", str(exc))

    def layers(self, value: Mapping[str, Any], where: str) -> dict[str, str | tuple[str, ...]]:
        """``layers``: technique name -> dotted module name, or an array of them."""
        out: dict[str, str | tuple[str, ...]] = {}
        for tech_name, written in self.table(value, where, tuple(registry.names()), "technique").items():
            layer = self.read_layer(written, f"{where}.{tech_name}", schema.field("techniques", "layer"))
            if layer is not _BAD:
                layer = self.layer_for(registry.get(tech_name), layer, f"{where}.{tech_name}")
            if layer is not None and layer is not _BAD:
                out[tech_name] = layer
        return out

    def layer_for(self, tech: registry.Technique, layer: str | tuple[str, ...], where: str,
                  ) -> str | tuple[str, ...] | None:
        """``layer`` as ``tech`` takes it (one name, or a tuple for a multi-layer technique);
        None after reporting a technique that takes no layer or fewer."""
        if tech.layer == "none":
            self.error(where, f"technique {tech.name!r} works on the input and takes no layer")
            return None
        if isinstance(layer, tuple) and len(layer) == 1 and tech.layer != "many":
            return layer[0]
        if tech.layer != "many" and not isinstance(layer, str):
            self.error(where, f"technique {tech.name!r} takes one layer, got {len(layer)}")
            return None
        return layer

    def resolve_techniques(self, entries: tuple[_Entry, ...] | None) -> tuple[TechniqueSpec, ...]:
        """Each entry's technique, parameters and layer checked against the registry (without a
        ``[[techniques]]`` section: every attribution technique but the attention ones and those
        of detection alone, :data:`galleryvis.tasks.OPT_IN`)."""
        if entries is None:
            return tuple(TechniqueSpec(n, registry.resolve_params(registry.get(n), {}), n, "techniques")
                         for n in registry.names("attribution")
                         if not registry.get(n).attention and registry.get(n).tasks - OPT_IN)
        specs: list[TechniqueSpec] = []
        for entry in entries:
            where, v, name = entry.where, entry.values, entry.values["name"]
            if name is schema.NO_VALUE:
                continue
            try:
                tech = registry.get(name)
            except registry.TechniqueError as exc:
                self.error(f"{where}.name", f"{exc} (`galleryvis techniques` lists them)")
                continue
            params = self.params(tech, v["params"], f"{where}.params")
            if params is None:
                continue
            layer = None if v["layer"] is None else self.layer_for(tech, v["layer"], f"{where}.layer")
            target = v["target"]
            if isinstance(target, (Region, DetectionTarget)):
                key = "mask" if isinstance(target, Region) else "box"
                self.error(f"{where}.target.{key}", f"a {'region' if key == 'mask' else 'box'} is given per image "
                                                    "(`[[images]] target`), not per technique")
                target = None
            if target is not None and tech.inputs.unit != "target":
                self.error(f"{where}.target", f"technique {name!r} optimizes a {tech.inputs.unit}, not a class")
                target = None
            spec = TechniqueSpec(name, params, v["id"] or name, where, layer, v["scale"],
                                 frozenset(v["params"]), target)
            if any(s.id == spec.id for s in specs):
                self.error(where, f"duplicate technique id {spec.id!r}: give one of them a distinct "
                                  '`id = "..."` to list a technique twice')
            else:
                specs.append(spec)
        return tuple(specs)

    def params(self, tech: registry.Technique, value: Mapping[str, Any], where: str) -> dict[str, Any] | None:
        """Defaults merged with ``value``; None after reporting every bad parameter."""
        ok = len(self.errors)
        for key, item in value.items():
            try:
                registry.resolve_params(tech, {key: item})
            except (registry.TechniqueError, OverflowError) as exc:
                self.error(f"{where}.{key}", str(exc))
        return registry.resolve_params(tech, value) if len(self.errors) == ok else None


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None if it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _file_problem(path: Path) -> str:
    """Why ``path`` is not a usable file ('' if it is one)."""
    try:
        if path.is_file():
            return ""
        if path.is_dir():
            return "is a folder, not a file"
        return f"no such file ({path})"
    except (OSError, ValueError) as exc:
        return f"unusable path: {exc}"


# --- the starter manifest --------------------------------------------------------------------


def starter_manifest(github_pages: bool = False) -> str:
    """A commented starter manifest for ``galleryvis init``; with ``github_pages`` it notes that the
    Pages workflow written beside it publishes the ``site`` folder."""
    output = (
        "# .github/workflows/galleryvis-pages.yml publishes this folder with GitHub Pages: keep it.\n"
        if github_pages else ""
    ) + 'output = "site"'

    text = (Path(__file__).resolve().parents[1] / "data" / "starter.toml.in").read_text(encoding="utf-8")
    return text.replace("@OUTPUT@", output)


