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
import glob
import importlib.resources
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, NamedTuple

from . import registry, schema, sources
from .errors import ManifestError
from .cache import location_problem
from .fileio import url_problem, url_scheme
from .metrics import SUBSTRATES, Substrate
from .postprocess import COLORMAPS
from .synthesis.api import spec_of

Device = Literal["auto", "cpu", "cuda", "mps"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
Executor = Literal["local", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "ray")
Scale = Literal["per-map", "per-image", "per-row"]
SCALES: tuple[str, ...] = typing.get_args(Scale)
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


def _known(name: str, source: str | None = None) -> bool:
    """Whether the source that would build a model called ``name`` knows it (asking only that
    source: a bundled name never imports torchvision)."""
    return sources.source_for(_NameOnly(name, None, None, source=source)).knows(sources.bare_name(name))


@dataclass(frozen=True)
class ImageSpec:
    """One input image file (a glob in the manifest becomes one ImageSpec per file).

    ``target`` is a class index, a class name from the model's labels, or None (top-1).
    ``field`` names the manifest entry it came from, e.g. ``images[2]``.
    """

    path: Path
    target: int | str | None = None
    field: str = ""


@dataclass(frozen=True)
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
    weights: str | None = None
    factory: str | None = None
    seed: int = 0
    source: str | None = None
    labels: Path | None = None
    size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    layers: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    id: str = ""
    field: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.name)


@dataclass(frozen=True)
class TechniqueSpec:
    """One technique row: a registered technique with its full (defaults-merged) parameters.

    ``id`` is unique within a manifest and defaults to ``name``, so one technique can be
    listed twice with different parameters. ``given``: the parameters the manifest wrote.
    """

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    field: str = ""
    layer: str | tuple[str, ...] | None = None
    scale: Scale | None = None
    given: frozenset[str] = frozenset()
    target: int | str | None = None  # the row's own class (None: each image's target)

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.name)


@dataclass(frozen=True)
class GallerySpec:
    """Gallery-wide settings; ``description`` is Markdown, ``output`` an absolute folder."""

    title: str = "galleryvis"
    description: str = ""
    output: Path = Path("site")
    device: Device = "auto"
    colormap: str | None = None
    alpha: float = 0.5
    scale: Scale = "per-map"
    outlier_perc: float = 0.5
    raw_maps: bool = False
    base_url: str = ""
    plugins: tuple[str, ...] = ()
    cache: Path | str | None = None  # a folder or an fsspec URL; None: .galleryvis-cache beside the manifest
    executor: Executor = "local"
    num_gpus: float | None = None  # None: 1 per Ray worker on a GPU, else 0
    ray_workers: int = 1
    num_cpus: int = 1  # CPUs per Ray worker (Ray sets its torch threads to this)


@dataclass(frozen=True)
class MetricsSpec:
    """Faithfulness metrics: deletion/insertion curves (``steps`` points, pixels replaced by
    ``substrate``), ROAD at ``road_percentile`` % removed (both orders) and the
    cascading-randomization sanity check."""

    enabled: bool = False
    deletion_insertion: bool = True
    sanity: bool = True
    steps: int = 20
    substrate: Substrate = "zero"
    road: bool = False
    road_percentile: float = 20.0
    sanity_steps: int = 3
    sanity_techniques: tuple[str, ...] | None = None


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
        return Path(__file__).resolve().parent.parent / "input_images"


def parse_manifest(data: Mapping[str, Any], *, path: Path | None, root: Path) -> Manifest:
    """Validate parsed TOML ``data``; relative paths resolve against ``root``.

    Raises ManifestError listing every problem found, each as ``file: field: message``.
    """
    p = _Parser(path.name if path is not None else _DEFAULT_LABEL, Path(root).absolute())
    top = p.table(data, "", ("gallery", "images", "models", "techniques", "metrics"))
    gallery = p.gallery(top.get("gallery", {}))
    images = p.images(top.get("images"))
    models = p.models(top.get("models"))
    techniques = p.techniques(top.get("techniques"))
    metrics = p.metrics(top.get("metrics", {}))
    if p.errors:
        raise ManifestError(list(dict.fromkeys(p.errors)))
    return Manifest(path, p.root, gallery, images, models, techniques, metrics)


def check_against_models(manifest: Manifest, adapters: Mapping[str, Any]) -> list[str]:
    """Problems only a loaded model reveals, one message each (empty list when all is well).

    ``adapters`` maps model id -> an object with ``labels`` (class names, maybe empty),
    ``num_classes`` and ``module_names``. Checks that every layer in ``models[i].layers``
    exists, and that each image target is a valid class index or a known class name
    (case-insensitive). Models missing from ``adapters`` are skipped.
    """
    label = manifest.label
    errors: list[str] = []
    for model in manifest.models:
        adapter = adapters.get(model.id)
        if adapter is None:
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
            if entry.target is None or (entry.field, entry.target) in reported:
                continue
            reported.add((entry.field, entry.target))
            where = f"{label}: {entry.field}.target"
            if isinstance(entry.target, int) and entry.target >= adapter.num_classes:
                errors.append(
                    f"{where}: class index {entry.target} is out of range for model {model.id!r} "
                    f"({adapter.num_classes} classes: 0..{adapter.num_classes - 1})"
                )
            elif isinstance(entry.target, str) and not adapter.labels:
                errors.append(
                    f"{where}: model {model.id!r} has no class names, so target {entry.target!r} "
                    "cannot be looked up (give the model a `labels` file, or use a class index)"
                )
            elif isinstance(entry.target, str) and entry.target.lower() not in lowered:
                hint = registry.suggest(entry.target, adapter.labels, fold_case=True)
                errors.append(f"{where}: model {model.id!r} has no class {entry.target!r}{hint}")
    return errors


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


class _Parser:
    """Walks the parsed TOML, collecting ``file: field: message`` errors."""

    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        self.root = root
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.label}: {where}: {message}" if where else f"{self.label}: {message}")

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

    def string(self, table: Mapping[str, Any], key: str, where: str, *, empty_ok: bool = False) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.error(f"{where}.{key}", f"expected a string, got {_toml_type(value)}")
            return None
        if not empty_ok and not value.strip():
            self.error(f"{where}.{key}", "must not be empty")
            return None
        return value

    def choice(self, table: Mapping[str, Any], key: str, where: str, options: tuple[str, ...],
               default: str) -> str:
        value = self.string(table, key, where)
        if value is None:
            return default
        if value not in options:
            self.error(f"{where}.{key}", f"must be one of {', '.join(options)}, got {value!r}"
                       f"{registry.suggest(value, options)}")
            return default
        return value

    def integer(self, table: Mapping[str, Any], key: str, where: str, *, low: int, high: int,
                default: int | None) -> int | None:
        value = table.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(f"{where}.{key}", f"expected an integer, got {_toml_type(value)}")
            return default
        if not low <= value <= high:
            self.error(f"{where}.{key}", f"must be from {low} to {high}, got {value}")
            return default
        return value

    def boolean(self, table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.error(f"{where}.{key}", f"expected true or false, got {_toml_type(value)}")
            return default
        return value

    def triple(self, table: Mapping[str, Any], key: str, where: str, *, positive: bool,
               ) -> tuple[float, float, float] | None:
        value = table.get(key)
        if value is None:
            return None
        numbers = [_finite(v) for v in value] if isinstance(value, list) else []
        if len(numbers) != 3 or None in numbers:
            self.error(f"{where}.{key}", f"expected an array of 3 numbers (R, G, B), got {_toml_type(value)}")
            return None
        if positive and any(v <= 0 for v in numbers):  # type: ignore[operator]
            self.error(f"{where}.{key}", f"every value must be greater than 0, got {value}")
            return None
        return numbers[0], numbers[1], numbers[2]  # type: ignore[return-value]

    def path(self, text: str) -> Path:
        """``text`` as a path: ``~`` expanded, relative paths joined to the manifest's folder."""
        return self.root / os.path.expanduser(text)

    def existing(self, table: Mapping[str, Any], key: str, where: str, what: str) -> Path | None:
        """A path value that must name an existing file."""
        text = self.string(table, key, where)
        if text is None:
            return None
        path = self.path(text)
        problem = _file_problem(path)
        if problem:
            self.error(f"{where}.{key}", f"{what} {text!r}: {problem}")
            return None
        return path

    # sections

    def gallery(self, value: Any) -> GallerySpec:
        where = "gallery"
        table = self.table(value, where, schema.keys("gallery"))
        base = GallerySpec()
        title = self.string(table, "title", where)
        description = self.string(table, "description", where, empty_ok=True)
        text = self.string(table, "output", where)
        output = Path(os.path.normpath(self.path(text))) if text is not None else self.root / "site"
        if text is not None and url_problem(text):
            self.error(f"{where}.output", url_problem(text))
        else:
            self.check_output(output, f"{where}.output", text or "site")
        device = self.choice(table, "device", where, DEVICES, base.device)
        colormap = self.string(table, "colormap", where)
        known = {name.lower(): name for name in COLORMAPS}
        if colormap is not None and colormap.lower() not in known:
            self.error(f"{where}.colormap", f"unknown colormap {colormap!r}"
                       f"{registry.suggest(colormap.lower(), list(known))}; known: {', '.join(COLORMAPS)}")
            colormap = None
        elif colormap is not None:
            colormap = known[colormap.lower()]
        base_url = self.string(table, "base_url", where, empty_ok=True) or ""
        if base_url and not re.fullmatch(r"https?://[^\s\"'<>]+", base_url):
            self.error(f"{where}.base_url", f"expected an http(s) address, got {base_url!r}")
            base_url = ""
        return GallerySpec(
            title=title or base.title, description=description or "", output=output,
            device=device, colormap=colormap, alpha=self.number(table, "alpha", where, base.alpha),
            scale=self.choice(table, "scale", where, SCALES, base.scale),  # type: ignore[arg-type]
            outlier_perc=self.number(table, "outlier_perc", where, base.outlier_perc),
            raw_maps=self.boolean(table, "raw_maps", where, base.raw_maps),
            base_url=base_url.rstrip("/") + "/" if base_url else "",
            plugins=self.plugins(table, where),
            cache=self.cache(table, where),
            executor=self.choice(table, "executor", where, EXECUTORS, base.executor),  # type: ignore[arg-type]
            num_gpus=self.number(table, "num_gpus", where, None),  # type: ignore[arg-type]
            ray_workers=self.integer(table, "ray_workers", where, **schema.bounds("gallery", "ray_workers"),
                                     default=base.ray_workers),  # type: ignore[arg-type]
            num_cpus=self.integer(table, "num_cpus", where, **schema.bounds("gallery", "num_cpus"),
                                  default=base.num_cpus),  # type: ignore[arg-type]
        )

    def cache(self, table: Mapping[str, Any], where: str) -> Path | str | None:
        """``gallery.cache``: an fsspec URL as written, else a folder relative to the manifest."""
        text = self.string(table, "cache", where)
        if text is None:
            return None
        if url_scheme(text) and url_scheme(text) != "file":
            problem = location_problem(text)
            if problem:
                self.error(f"{where}.cache", problem)
            return text
        return self.path(text.removeprefix("file://"))

    def number(self, table: Mapping[str, Any], key: str, where: str, default: float) -> float:
        """A finite number within the schema's range for ``where.key``."""
        if key not in table:
            return default
        value = _finite(table[key])
        low, high = schema.bounds(where, key).values()
        if value is None or not low <= value <= high:
            self.error(f"{where}.{key}", f"expected a number from {low:g} to {high:g}, got {_toml_type(table[key])}")
            return default
        return value

    def plugins(self, table: Mapping[str, Any], where: str) -> tuple[str, ...]:
        """Import the entry-point plug-ins and ``plugins`` (module names or .py files), so the
        techniques they register are known when the technique list is checked."""
        from . import plugins

        value = table.get("plugins", [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.error(f"{where}.plugins", f"expected a list of module names or .py files, got {_toml_type(value)}")
            return ()
        try:
            plugins.load_entry_points()
        except plugins.PluginError as exc:
            self.error(f"{where}.plugins", str(exc))
        for spec in value:
            try:
                plugins.load(spec, self.root)
            except plugins.PluginError as exc:
                self.error(f"{where}.plugins", str(exc))
        return tuple(value)

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
        specs: dict[tuple[Path, int | str | None], ImageSpec] = {}  # one spec per (file, target)
        for i, entry in enumerate(self.array_of_tables(value, "images", "[[images]]")):
            where = f"images[{i}]"
            table = self.table(entry, where, schema.keys("images"))
            target = self.target(table.get("target"), f"{where}.target")
            if "path" not in table and isinstance(entry, Mapping):
                self.error(where, "missing required key 'path' (an image file or a glob such as 'photos/*.jpg')")
            text = self.string(table, "path", where)
            if text is None:
                continue
            for path in self.expand(text, f"{where}.path"):  # decoded by the pipeline (jobs.read_images)
                specs.setdefault((path, target), ImageSpec(path, target, where))
        if isinstance(value, list) and not value:
            self.error("images", "empty: add at least one [[images]] section with a `path`")
        return tuple(specs.values())

    def target(self, value: Any, where: str) -> int | str | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "top1"):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            self.error(where, f'expected a class index, a class name or "top1", got {_toml_type(value)}')
            return None
        if isinstance(value, int) and value < 0:
            self.error(where, f"class index must be 0 or more, got {value}")
            return None
        if isinstance(value, str) and not value.strip():
            self.error(where, 'must not be empty (use "top1" for the predicted class)')
            return None
        return value

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

    def models(self, value: Any) -> tuple[ModelSpec, ...]:
        if value is None:
            self.error("models", 'missing: add at least one [[models]] section, e.g. name = "resnet50"')
            return ()
        specs: list[ModelSpec] = []
        entries = self.array_of_tables(value, "models", "[[models]]")
        if isinstance(value, list) and not value:
            self.error("models", 'empty: add at least one [[models]] section, e.g. name = "resnet50"')
        for i, entry in enumerate(entries):
            spec = self.model(entry, f"models[{i}]")
            if spec is None:
                continue
            if any(s.id == spec.id for s in specs):
                self.error(spec.field, f"duplicate model id {spec.id!r}: give one of them a distinct "
                                       '`id = "..."` to show the same model twice')
            else:
                specs.append(spec)
        return tuple(specs)

    def model(self, entry: Any, where: str) -> ModelSpec | None:
        table = self.table(entry, where, schema.keys("models"))
        ok = len(self.errors)
        factory = self.string(table, "factory", where)
        if factory is not None and not _FACTORY.fullmatch(factory):
            self.error(f"{where}.factory", f"expected 'package.module:function', got {factory!r}")
        name = self.string(table, "name", where)
        if name is None and "name" not in table and factory is None and "factory" not in table:
            self.error(where, "missing required key 'name' (a torchvision model such as 'resnet50', "
                              "'efficientnet_lite0', or a `factory`)")
        source = self.source(table, where, name)
        if name is not None and factory is None and "factory" not in table and not _known(name, source):
            options = sources.source_for(_NameOnly(name, None, None, source=source)).names()
            self.error(f"{where}.name", f"unknown model {name!r}{registry.suggest(name, options)} "
                                        "(any torchvision classification model, efficientnet_lite0 / 1 / 2, or "
                                        "a timm: / hf: model)")
        weights = self.weights(table, where, None if "factory" in table else name or "", source)
        seed: int = self.integer(table, "seed", where, **schema.bounds("models", "seed"), default=0)  # type: ignore[assignment]
        labels = self.existing(table, "labels", where, "labels file")
        size = self.integer(table, "size", where, **schema.bounds("models", "size"), default=None)
        mean = self.triple(table, "mean", where, positive=False)
        std = self.triple(table, "std", where, positive=True)
        layers = self.layers(table.get("layers", {}), f"{where}.layers")
        model_id = self.string(table, "id", where)
        if len(self.errors) > ok:
            return None
        name = name or factory.rsplit(":", 1)[1].rsplit(".", 1)[-1]  # type: ignore[union-attr]
        return ModelSpec(name=name, weights=weights, factory=factory, seed=seed, source=source, labels=labels,
                         size=size, mean=mean, std=std, layers=layers, id=model_id or name, field=where)

    def source(self, table: Mapping[str, Any], where: str, name: str | None) -> str | None:
        """``source``, or the one the name's ``timm:`` / ``hf:`` prefix chooses; both must agree."""
        given = self.string(table, "source", where)
        prefixed = sources.prefixed_source(name or "")
        if given is not None and given not in sources.SOURCE_NAMES:
            self.error(f"{where}.source", f"unknown source {given!r}{registry.suggest(given, sources.SOURCE_NAMES)}; "
                                          f"use one of {', '.join(sources.SOURCE_NAMES)}")
            return None
        if given is not None and prefixed is not None and given != prefixed:
            self.error(f"{where}.source", f"source {given!r} contradicts the name {name!r}, a {prefixed} model")
            return None
        return given or prefixed

    def weights(self, table: Mapping[str, Any], where: str, name: str | None, source: str | None = None) -> str | None:
        """Normalized ``weights``: DEFAULT, none, an enum member name or an absolute path (a
        model folder too, for timm).

        ``name`` is the model name, or None for a factory model.
        """
        text = self.string(table, "weights", where)
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

    def layers(self, value: Any, where: str) -> dict[str, str | tuple[str, ...]]:
        """``layers``: technique name -> dotted module name, or an array of them."""
        names = registry.names()
        table = self.table(value, where, tuple(names), "technique")
        out: dict[str, str | tuple[str, ...]] = {}
        for tech_name, layer in table.items():
            key = f"{where}.{tech_name}"
            tech = registry.get(tech_name)
            if isinstance(layer, str) and layer.strip():
                out[tech_name] = layer
            elif isinstance(layer, list) and layer and all(isinstance(v, str) and v.strip() for v in layer):
                out[tech_name] = layer[0] if len(layer) == 1 and tech.layer != "many" else tuple(layer)
            else:
                self.error(key, f"expected a module name such as 'layer4' or an array of them, "
                                f"got {_toml_type(layer)}")
                continue
            if tech.layer == "none":
                self.error(key, f"technique {tech_name!r} works on the input and takes no layer")
            elif tech.layer != "many" and not isinstance(out[tech_name], str):
                self.error(key, f"technique {tech_name!r} takes one layer, got {len(layer)}")
        return out

    def techniques(self, value: Any) -> tuple[TechniqueSpec, ...]:
        if value is None:
            return tuple(TechniqueSpec(n, registry.resolve_params(registry.get(n), {}), n, "techniques")
                         for n in registry.names("attribution") if not registry.get(n).attention)
        specs: list[TechniqueSpec] = []
        for i, entry in enumerate(self.array_of_tables(value, "techniques", "[[techniques]]")):
            where = f"techniques[{i}]"
            table = self.table(entry, where, schema.keys("techniques"))
            name = self.string(table, "name", where)
            if "name" not in table and isinstance(entry, Mapping):
                self.error(where, "missing required key 'name' (`galleryvis techniques` lists them)")
            tech_id = self.string(table, "id", where)
            if name is None:
                continue
            try:
                tech = registry.get(name)
            except registry.TechniqueError as exc:
                self.error(f"{where}.name", f"{exc} (`galleryvis techniques` lists them)")
                continue
            params = self.params(tech, table.get("params", {}), f"{where}.params")
            if params is None:
                continue
            layer = None
            if "layer" in table:
                layer = self.layers({name: table["layer"]}, where).get(name)
            scale = self.choice(table, "scale", where, SCALES, "") or None
            target = self.target(table.get("target"), f"{where}.target")
            if target is not None and tech.family == "synthesis" and spec_of(name).unit != "target":
                self.error(f"{where}.target", f"technique {name!r} optimizes a {spec_of(name).unit}, not a class")
                target = None
            spec = TechniqueSpec(name, params, tech_id or name, where, layer, scale,  # type: ignore[arg-type]
                                 frozenset(table.get("params", {})), target)
            if any(s.id == spec.id for s in specs):
                self.error(where, f"duplicate technique id {spec.id!r}: give one of them a distinct "
                                  '`id = "..."` to list a technique twice')
            else:
                specs.append(spec)
        return tuple(specs)

    def params(self, tech: registry.Technique, value: Any, where: str) -> dict[str, Any] | None:
        """Defaults merged with ``value``; None after reporting every bad parameter."""
        if not isinstance(value, Mapping):
            self.error(where, f"expected a table of parameters, got {_toml_type(value)}")
            return None
        ok = len(self.errors)
        for key, item in value.items():
            try:
                registry.resolve_params(tech, {key: item})
            except (registry.TechniqueError, OverflowError) as exc:
                self.error(f"{where}.{key}", str(exc))
        return registry.resolve_params(tech, value) if len(self.errors) == ok else None

    def metrics(self, value: Any) -> MetricsSpec:
        where = "metrics"
        table = self.table(value, where, schema.keys("metrics"))
        base = MetricsSpec()
        chosen = table.get("sanity_techniques")
        if chosen is not None:
            if not isinstance(chosen, list) or not all(isinstance(n, str) for n in chosen):
                self.error(f"{where}.sanity_techniques", f"expected an array of technique names, got {_toml_type(chosen)}")
                chosen = None
            else:
                for n in chosen:
                    if n not in registry.names("attribution"):
                        self.error(f"{where}.sanity_techniques",
                                   f"unknown technique {n!r}{registry.suggest(n, registry.names('attribution'))}")
                chosen = tuple(chosen)
        return MetricsSpec(
            enabled=self.boolean(table, "enabled", where, base.enabled),
            deletion_insertion=self.boolean(table, "deletion_insertion", where, base.deletion_insertion),
            sanity=self.boolean(table, "sanity", where, base.sanity),
            steps=self.integer(table, "steps", where, **schema.bounds("metrics", "steps"), default=base.steps),  # type: ignore[arg-type]
            substrate=self.choice(table, "substrate", where, SUBSTRATES, base.substrate),  # type: ignore[arg-type]
            road=self.boolean(table, "road", where, base.road),
            road_percentile=self.number(table, "road_percentile", where, base.road_percentile),
            sanity_steps=self.integer(table, "sanity_steps", where, **schema.bounds("metrics", "sanity_steps"),
                                      default=base.sanity_steps),  # type: ignore[arg-type]
            sanity_techniques=chosen,
        )


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

    text = (Path(__file__).parent / "data" / "starter.toml.in").read_text(encoding="utf-8")
    return text.replace("@OUTPUT@", output)


