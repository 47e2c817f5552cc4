"""The manifest's schema, declared once: every section's keys with their type, default, range
and a one-line doc. The parser takes its allowed keys (in this order) and its number ranges
from here; the tests check that it refuses a wrong-typed value for every key, that the parsed
specs' defaults and docs/manifest.md's tables equal these, and that ``galleryvis init``'s
starter (``data/starter.toml.in``) uses no other keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: a field with no default in the parsed spec (required, or derived from another field)
NO_VALUE: Any = object()


@dataclass(frozen=True)
class Field:
    """One manifest key: ``type`` and ``default`` as docs/manifest.md writes them ("" = none),
    ``value`` the parsed spec's default (:data:`NO_VALUE` where there is none), ``doc``, and
    ``range``: the inclusive bounds of a number, which the parser takes from here."""

    key: str
    type: str
    default: str
    doc: str
    value: Any = NO_VALUE
    range: tuple[float, float] | None = None  # inclusive bounds the parser enforces


SECTIONS: dict[str, tuple[Field, ...]] = {
    "gallery": (
        Field("title", "string", '`"galleryvis"`', "page title", "galleryvis"),
        Field("description", "string (Markdown)", '`""`', "text shown under the title", ""),
        Field("output", "path", '`"site"`', "folder the gallery is written to"),
        Field("device", '`"auto"`, `"cpu"`, `"cuda"`, `"mps"`', '`"auto"`', "where models run", "auto"),
        Field("colormap", "string", "technique default", "colormap of CAM heatmaps", None),
        Field("alpha", "number 0 to 1", "`0.5`", "opacity of the heatmap in overlay views", 0.5, (0, 1)),
        Field("scale", '`"per-map"`, `"per-image"`, `"per-row"`', '`"per-map"`',
              "which maps share one colour scale: each its own, a technique's maps of one image, or its whole row",
              "per-map"),
        Field("outlier_perc", "number 0 to 50", "`0.5`",
              "percent of the largest magnitudes clipped in gradient-family views (captum's `outlier_perc`)",
              0.5, (0, 50)),
        Field("raw_maps", "boolean", "`false`",
              "a zip per model of every raw map (float16 .npy) on the build page; large: about 160 KB per cell", False),
        Field("base_url", "string (URL)", '`""`',
              "the published site's address (GitHub Pages); gallery.md links its HTML pages there", ""),
        Field("plugins", "list of strings", "`[]`", "technique plugins to import (modules or .py files)", ()),
        Field("cache", "path or URL", "`.galleryvis-cache` beside the manifest",
              "the cache: a folder, or an fsspec URL (`s3://bucket/prefix`)", None),
        Field("executor", '`"local"`, `"ray"`', '`"local"`', "what computes the cells: this process, or a Ray cluster",
              "local"),
        Field("num_gpus", "number 0 to 64", "1 on a GPU, else 0", "GPUs each Ray worker asks for (fractions allowed)",
              None, (0, 64)),
        Field("ray_workers", "integer 1 to 1024", "`1`", "Ray workers (actors) per model", 1, (1, 1024)),
        Field("num_cpus", "integer 1 to 1024", "`1`", "CPUs each Ray worker asks for (its torch threads)", 1,
              (1, 1024)),
    ),
    "images": (
        Field("path", "string, **required**", "", "an image file, or a glob"),
        Field("target", "integer, string", '`"top1"`', "the class to explain", None),
    ),
    "models": (
        Field("name", "string", "", "a torchvision classification model or a bundled one; `timm:` / `hf:` choose "
                                    "the source"),
        Field("source", '`"torchvision"`, `"timm"`, `"huggingface"`', "the name's prefix, else `\"torchvision\"`",
              "where the model comes from", None),
        Field("id", "string", "`name`", "the name the gallery shows; unique"),
        Field("weights", "string", '`"DEFAULT"`', '"DEFAULT", "none", an enum member or a weights file', None),
        Field("factory", 'string `"package.module:function"`', "", "your own model: a function returning an nn.Module",
              None),
        Field("seed", "integer 0 to 4294967295", "`0`", "seed of the random initialization (`weights = \"none\"`)",
              0, (0, 2**32 - 1)),
        Field("labels", "path", "from the weights", "class names: a text file, one per line, or .json", None),
        Field("size", "integer 8 to 4096", "from the weights, else 224", "input size in pixels", None, (8, 4096)),
        Field("mean", "array of 3 numbers", "from the weights, else ImageNet", "per-channel normalization mean", None),
        Field("std", "array of 3 numbers > 0", "from the weights, else ImageNet", "per-channel normalization std", None),
        Field("layers", "table", "probe", "technique name -> layer"),
    ),
    "techniques": (
        Field("name", "string, **required**", "", "a technique name (`galleryvis techniques`)"),
        Field("id", "string", "`name`", "the name the gallery shows; unique"),
        Field("params", "table", "`{}`", "parameters; each one left out keeps its default"),
        Field("layer", "string or array", "the model's `layers` entry, else its last conv block",
              "this entry's layer, for every model", None),
        Field("scale", '`"per-map"`, `"per-image"`, `"per-row"`', "the gallery's `scale`",
              "this entry's colour-scale sharing", None),
        Field("target", "integer, string", "each image's `target`",
              "the class every cell of this row explains or optimizes", None),
    ),
    "metrics": (
        Field("enabled", "boolean", "`false`", "compute metrics at all", False),
        Field("deletion_insertion", "boolean", "`true`", "deletion and insertion curves", True),
        Field("sanity", "boolean", "`true`", "cascading model-randomization check", True),
        Field("steps", "integer 2 to 1000", "`20`", "points per deletion/insertion curve", 20, (2, 1000)),
        Field("substrate", '`"zero"`, `"black"`, `"blur"`', '`"zero"`', "what deleted pixels become", "zero"),
        Field("road", "boolean", "`false`", "ROAD scores: most / least relevant pixels removed by noisy linear "
                                            "imputation", False),
        Field("road_percentile", "number 1 to 99", "`20`", "percent of the pixels ROAD removes", 20.0, (1, 99)),
        Field("sanity_steps", "integer 1 to 100", "`3`", "randomization steps of the cascade", 3, (1, 100)),
        Field("sanity_techniques", "array of technique names", "every technique", "techniques the sanity check runs",
              None),
    ),
}


def keys(section: str) -> tuple[str, ...]:
    """The keys a section allows, in the order messages list them."""
    return tuple(f.key for f in SECTIONS[section])


def field(section: str, key: str) -> Field:
    """The declaration of ``key`` in ``section``."""
    return next(f for f in SECTIONS[section] if f.key == key)


def bounds(section: str, key: str) -> dict[str, Any]:
    """``low`` / ``high`` of a field that declares a range, as the parser's ``integer`` takes them."""
    declared = field(section, key).range
    assert declared is not None, f"{section}.{key} declares no range"
    return {"low": declared[0], "high": declared[1]}
