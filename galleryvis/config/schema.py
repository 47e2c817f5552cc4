"""The manifest's schema, declared once: every section's keys with the parser's reader, the
parsed spec's default, a number's range or a string's choices, and the docs' words.

Everything else follows from here: the parser reads each key with its declared reader (and
allows only these keys, in this order), the spec dataclasses take their defaults from
``value``, docs/manifest.md's key tables are :func:`markdown_table`'s output
(``python -m galleryvis.config.schema docs/manifest.md`` rewrites them), and the tests check that
``galleryvis init``'s starter (``data/starter.toml.in``) mentions every key and no other.
This module imports nothing of galleryvis and no third-party package.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: a field with no default in the parsed spec (it is required)
NO_VALUE: Any = object()

#: What the parser's readers accept; "integer" and "number" need a ``range``, "choice" ``choices``.
READERS = ("string", "text", "choice", "integer", "number", "boolean", "modules", "triple", "positive_triple",
           "file", "table", "target", "layer", "names", "factory", "prompts", "boxes")


@dataclass(frozen=True)
class Field:
    """One manifest key.

    ``read``: the parser's reader (:data:`READERS`). ``value``: the parsed spec's default
    (:data:`NO_VALUE`: required). ``range``: a number's inclusive bounds; ``choices``: a string's
    options. ``type`` and ``default``: docs/manifest.md's words, derived from the reader, range,
    choices and value where left out. ``doc``: the docs' meaning column.
    """

    key: str
    read: str
    doc: str
    value: Any = NO_VALUE
    type: str = ""
    default: str | None = None
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.read in READERS, f"{self.key}: unknown reader {self.read!r}"
        assert (self.range is not None) == (self.read in ("integer", "number")), f"{self.key}: range"
        assert bool(self.choices) == (self.read == "choice"), f"{self.key}: choices"
        if not self.type:
            object.__setattr__(self, "type", _type_words(self))
        if self.default is None:
            object.__setattr__(self, "default", _default_words(self.value))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _type_words(f: Field) -> str:
    if f.choices:
        return ", ".join(f'`"{c}"`' for c in f.choices)
    if f.range is not None:
        return f"{f.read} {_number(f.range[0])} to {_number(f.range[1])}"
    assert f.read == "boolean", f"{f.key}: give its type in words"
    return "boolean"


def _default_words(value: Any) -> str:
    if value is NO_VALUE:
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"`{_number(value)}`"
    if isinstance(value, (str, Path)):
        return f'`"{value}"`'
    if isinstance(value, (tuple, list, dict)) and not value:
        return "`[]`" if not isinstance(value, dict) else "`{}`"
    raise AssertionError(f"give the default of {value!r} in words")


_SCALES = ("per-map", "per-image", "per-row")

SECTIONS: dict[str, tuple[Field, ...]] = {
    "gallery": (
        Field("title", "string", "page title", "galleryvis", "string"),
        Field("description", "text", 'text shown under the title; use `"""…"""` for several lines', "",
              "string (Markdown)"),
        Field("output", "string", "folder the gallery is written to. It may not be the manifest's own folder or a "
                                  "folder above it, nor an existing file. For the embedded default gallery it is "
                                  "`site/` in the current folder.", Path("site"), "path"),
        Field("device", "choice", "where models run; `auto` = CUDA if available, else Apple MPS, else CPU. Asking "
                                  "for `cuda` or `mps` where there is none is an error, not a fallback.", "auto",
              choices=("auto", "cpu", "cuda", "mps")),
        Field("colormap", "string", "colormap of CAM heatmaps: `inferno` (default), `viridis`, `magma`, `cividis`, "
                                    "`gray`, `turbo`, `jet`, `hsv`, or a diverging one (`vik`, `RdBu_r`, `coolwarm`, "
                                    "`bwr`, `seismic`). Case does not matter. Signed maps always use a diverging "
                                    "colormap.", None, "string", "technique default"),
        Field("alpha", "number", "opacity of the heatmap in overlay views", 0.5, range=(0, 1)),
        Field("scale", "choice", "which maps share one colour scale: each its own, a technique's maps of one image, "
                                 "or its whole row (every image and model), so strengths compare across the row",
              "per-map", choices=_SCALES),
        Field("outlier_perc", "number", "percent of the largest magnitudes clipped in gradient-family views "
                                        "(captum's `outlier_perc`), so one extreme pixel cannot leave the rest grey",
              0.5, range=(0, 50)),
        Field("raw_maps", "boolean", "a zip per model of every raw map (float16 .npy) on the build page; large: "
                                     "about 160 KB per cell", False),
        Field("base_url", "text", "the published site's address (GitHub Pages); gallery.md links its HTML pages "
                                  "there, since GitHub shows a relative `.html` link as source", "", "string (URL)"),
        Field("plugins", "modules", "technique plugins to import before the techniques are checked: module names, "
                                    "or `.py` files relative to the manifest ([how to write one](adding-a-technique"
                                    ".md#a-technique-as-a-plugin-no-change-to-galleryvis)); installed packages' "
                                    "`galleryvis.plugins` entry points are always loaded", (), "list of strings"),
        Field("cache", "string", "the cache: a folder (relative to the manifest), or an fsspec URL: "
                                 "`s3://bucket/prefix` (with `pip install \"galleryvis[s3]\"`), `gs://bucket/prefix` "
                                 "(gcsfs), `file:///abs/folder`; `--cache-dir` overrides it ([the cache on S3 or "
                                 "GCS](scale-out.md#the-cache-on-s3-or-gcs))", None, "path or URL",
              "`.galleryvis-cache` beside the manifest"),
        Field("executor", "choice", "what computes the cells: this process, or a Ray cluster (`pip install "
                                    "\"galleryvis[ray]\"`; [scale-out](scale-out.md)); `--executor` overrides it",
              "local", choices=("local", "ray")),
        Field("num_gpus", "number", "GPUs each Ray worker asks for; fractions (`0.5`) put several workers on one "
                                    "GPU; `--num-gpus` overrides it", None, default="1 on a GPU, else 0",
              range=(0, 64)),
        Field("ray_workers", "integer", "Ray workers (actors) per model, each loading the model once; "
                                        "`--ray-workers` overrides it", 1, range=(1, 1024)),
        Field("num_cpus", "integer", "CPUs each Ray worker asks for; Ray sets the worker's torch threads to it, so "
                                     "on a CPU-only cluster `ray_workers` × `num_cpus` ≈ the cores per model; "
                                     "`--num-cpus` overrides it", 1, range=(1, 1024)),
    ),
    "images": (
        Field("path", "string", "an image file, or a glob: `*` matches within a folder name, `**` any number of "
                                "folders (`\"photos/**/*.jpg\"`), `?` one character, `[ab]` one of the characters",
              type="string, **required**"),
        Field("target", "target", "the class to explain: `\"top1\"` (the model's own prediction, per model; a "
                                  "segmentation model's class covering most pixels, background excepted), a "
                                  "class index (`281`), or a class name from the model's labels (`\"tabby\"`, "
                                  "matched ignoring case); for a segmentation model also a table "
                                  "`{ class = \"dog\", mask = \"dog-mask.png\" }`: the class explained over the "
                                  "region of a binary image the photo's size (without `mask`: the pixels the model "
                                  "assigns to the class); for an image-text model also `{ text = \"a red car\" }`: "
                                  "the similarity of the photo with any text, not only a prompt; for a detector "
                                  "`\"top1\"` is its highest-scoring detection, a class its highest-scoring "
                                  "detection of that class, and `{ class = \"dog\", box = [x0, y0, x1, y1] }` (the "
                                  "class optional) the detection that matches the box (the photo's pixels) best, "
                                  "IoU >= 0.5", None,
              "integer, string, table", '`"top1"`'),
        Field("top", "integer", "a detector's K best detections (of the target's class, when it names one), one "
                                "column each; detectors only", None, default="1", range=(1, 100)),
        Field("mask", "file", "where the object is (ground truth for localisation metrics such as "
                              "`metrics.pointing_game`; the gallery does not score it yet): a binary image (non-zero "
                              "= object) the size of the photo, relative to the manifest; `path` must name one file",
              None, "path", "none"),
        Field("box", "boxes", "where the object is, as a box `[x0, y0, x1, y1]` in the photo's pixels (x to the "
                              "right, y down) or a list of boxes; instead of `mask`; `path` must name one file",
              None, "list of 4 numbers, or a list of them", "none"),
    ),
    "models": (
        Field("name", "string", "a torchvision classification model (`alexnet`, `vgg16`, `resnet50`, `densenet121`, "
                                "`mobilenet_v3_large`, `efficientnet_b0`, `convnext_tiny`, `vit_b_16`, … every name "
                                "in `torchvision.models.list_models(module=torchvision.models)`), or "
                                "`efficientnet_lite0`, the EfficientNet-Lite0 that ships with galleryvis (ImageNet "
                                "weights included, works offline); with the prefix `timm:` a timm architecture "
                                "(`timm:vit_small_patch16_224`), with `hf:` a Hugging Face image classifier (a hub "
                                "id or a local folder, `hf:google/vit-base-patch16-224`), with `open_clip:` an "
                                "open_clip architecture (`open_clip:ViT-B-32`) or model config file, with `ultralytics:` an "
                                "Ultralytics YOLO detector (`ultralytics:yolov8n`); torchvision's segmentation models "
                                "and detectors (`fasterrcnn_resnet50_fpn_v2`, `retinanet_resnet50_fpn`, "
                                "`ssd300_vgg16`, …) go by their names. **Required** "
                                "unless "
                                "`factory` is given.", type="string"),
        Field("source", "string", "where the model comes from; the same as the name's prefix (`source = \"timm\"` "
                                  "with `name = \"vit_small_patch16_224\"`); a prefix that contradicts it is an "
                                  "error", None, '`"torchvision"`, `"timm"`, `"huggingface"`, `"open_clip"`, `"ultralytics"`',
              'the name\'s prefix, else `"torchvision"`'),
        Field("weights", "string", "see below", None, "string", '`"DEFAULT"`'),
        Field("factory", "factory", "your own model: a function, called without arguments, that returns an "
                                    "`nn.Module`", None, 'string `"package.module:function"`', ""),
        Field("seed", "integer", "the seed of torch's random generator while the model is built: what a random "
                                 "initialization (`weights = \"none\"`, or a factory that initializes its own layers) "
                                 "comes from, so the same manifest gives the same network, and the same gallery, in "
                                 "every build and on every machine", 0, range=(0, 2**32 - 1)),
        Field("id", "string", "the name the gallery shows; must be unique, so set it to show one model twice (say, "
                              "trained and random weights)", "", "string", "`name`"),
        Field("labels", "file", "class names: a text file with one name per line (first line = class 0, blank "
                                "lines skipped), or a `.json` file holding a list of names or an object "
                                "`{\"0\": \"name\", …}`; overrides the model's own class names", None, "path",
              "from the weights"),
        Field("size", "integer", "images are resized and centre-cropped to `size` × `size`", None,
              default="from the weights, else 224", range=(8, 4096)),
        Field("mean", "triple", "per-channel normalization mean (R, G, B) of 0–1 pixel values", None,
              "array of 3 numbers", "from the weights, else ImageNet"),
        Field("std", "positive_triple", "per-channel normalization standard deviation", None,
              "array of 3 numbers > 0", "from the weights, else ImageNet"),
        Field("layers", "table", "technique name → layer (see below)", {}, "table", "probe"),
        Field("prompts", "prompts", "an image-text model's prompts (open_clip, Hugging Face CLIP / SigLIP): the texts "
                                    "it becomes a zero-shot classifier over, one class each (its logits: the model's "
                                    "scaled image-text similarities), or `\"imagenet\"`: ImageNet's 1000 classes, "
                                    "each averaged over CLIP's 7 ImageNet templates ([tasks](tasks.md#image-text-"
                                    "models-clip-siglip)); left out, the 1000 classes as \"a photo of a {}.\" "
                                    "(7 times fewer texts to encode); other models refuse it", None,
              'array of strings, or `"imagenet"`', 'ImageNet\'s classes, one template each'),
        Field("task", "choice", "what the model does, which decides what its targets explain and which techniques "
                                "run ([tasks](tasks.md)): a classifier's output may be read as `multilabel` (one "
                                "sigmoid per class) and back; any other task the model cannot do is an error", None,
              default="inferred: `segmentation` for torchvision's `fcn_*`, `deeplabv3_*`, `lraspp_*` and Hugging "
                      "Face `*ForSemanticSegmentation`, `detection` for torchvision's detectors, Ultralytics' and "
                      "Hugging Face `*ForObjectDetection`, `image-text` for CLIP-like models, else "
                      "`classification`",
              choices=("classification", "multilabel", "segmentation", "image-text", "detection")),
        Field("score_threshold", "number", "a detector's: its detections of a lower score are ignored (by every "
                                           "target and technique); other models refuse it", None,
              default="the detector's own (torchvision's 0.05, else 0)", range=(0, 1)),
        Field("max_detections", "integer", "a detector's: at most this many detections per image are read, the "
                                           "highest-scoring first; other models refuse it", None,
              default="the detector's own (torchvision's 100, else all)", range=(1, 100000)),
    ),
    "techniques": (
        Field("name", "string", "a technique name; `galleryvis techniques` lists every one with its parameters and "
                                "defaults", type="string, **required**"),
        Field("id", "string", "the name the gallery shows; must be unique, so set it to list one technique twice "
                              "with different parameters", "", "string", "`name`"),
        Field("params", "table", "parameters; each one left out keeps its default", {}, "table"),
        Field("layer", "layer", "this entry's layer, for every model (so it must exist in each); beats "
                                "`models[].layers`; e.g. LRP at one layer, LayerCAM at several", None,
              "string or array", "the model's `layers` entry, else its last conv block"),
        Field("scale", "choice", "this entry's colour-scale sharing", None, default="the gallery's `scale`",
              choices=_SCALES),
        Field("target", "target", "the class every cell of this row explains or optimizes (an index, a class "
                                  "name or an image-text model's `{ text = ... }`, as for images); a class visualization with a `target` does not depend on "
                                  "the image, so it is made once per model and shown in a table of its own, beside "
                                  "the other rows like it (the seed's regularization comparison, below)", None,
              "integer, string, table", "each image's `target`"),
    ),
    "metrics": (
        Field("enabled", "boolean", "compute metrics at all (they cost extra forward passes)", False),
        Field("deletion_insertion", "boolean", "deletion and insertion curves and their areas (Petsiuk et al. "
                                               "2018, RISE)", True),
        Field("sanity", "boolean", "cascading model-randomization check (Adebayo et al. 2018)", True),
        Field("steps", "integer", "points per deletion/insertion curve", 20, range=(2, 1000)),
        Field("substrate", "choice", "what deleted pixels become: zeros of the normalized input (the dataset's mean "
                                     "colour), black pixels, or a blurred copy of the image", "zero",
              choices=("zero", "black", "blur")),
        Field("road", "boolean", "ROAD scores (Rong et al. 2022): the class probability after the most (MoRF) and "
                                 "the least (LeRF) relevant `road_percentile` % of the pixels are removed by noisy "
                                 "linear imputation; one forward and one sparse solve per map and order", False),
        Field("road_percentile", "number", "percent of the pixels ROAD removes", 20.0, range=(1, 99)),
        Field("sanity_steps", "integer", "randomization steps of the cascade; each step recomputes the map, so "
                                         "this multiplies the technique's cost", 3, range=(1, 100)),
        Field("sanity_techniques", "names", "run the sanity check only for these (it is the expensive part)", None,
              "array of technique names", "every technique"),
        Field("compute", "names", "Quantus-grade metrics of `galleryvis.metrics` computed for every attribution map "
                                  "at their defaults, each shown beside the map (e.g. `[\"sparseness\", "
                                  "\"pixel_flipping\", \"pointing_game\"]`; [docs/metrics.md](metrics.md) gives each "
                                  "one's cost in model passes); localisation metrics on the images with a `mask` or "
                                  "`box`", (), "array of metric names", "none"),
    ),
    "concepts": (
        Field("reference", "string", "the reference set a concept atlas shows each concept's most relevant and most "
                                     "active examples from ([concepts](concepts.md#reference-examples-in-the-atlas)): "
                                     "an image file or a glob relative to the manifest (`\"refs/**/*.jpg\"`), as "
                                     "`[[images]] path`", None, "string", "the gallery's images"),
    ),
}


def keys(section: str) -> tuple[str, ...]:
    """The keys a section allows, in the order messages list them."""
    return tuple(f.key for f in SECTIONS[section])


def field(section: str, key: str) -> Field:
    """The declaration of ``key`` in ``section``."""
    return next(f for f in SECTIONS[section] if f.key == key)


# --- docs/manifest.md's key tables -----------------------------------------------------------

_HEADER = "| key | type | default | meaning |\n|---|---|---|---|\n"
#: a section heading of docs/manifest.md (``## `[gallery]` ``) and, after its text, its key table
_TABLE = re.compile(r"(?P<head>^## `\[+(?P<section>\w+)\]+`\n.*?)"
                    r"^\| key \| type \| default \| meaning \|\n(?:^\|[^\n]*\n)+", re.M | re.S)


def markdown_table(section: str) -> str:
    """The docs' table of ``section``'s keys: one row per field, in the schema's order."""
    rows = ((f"`{f.key}`", f.type, f.default, f.doc) for f in SECTIONS[section])
    return _HEADER + "".join("|" + "|".join(f" {c} " if c else " " for c in row) + "|\n" for row in rows)


def rewrite_tables(text: str) -> str:
    """``text`` (docs/manifest.md) with each section's key table replaced by :func:`markdown_table`."""
    return _TABLE.sub(lambda m: m["head"] + markdown_table(m["section"]), text)


def documented_sections(text: str) -> list[str]:
    """The sections whose key table ``text`` holds, in its order."""
    return [m["section"] for m in _TABLE.finditer(text)]


if __name__ == "__main__":  # python -m galleryvis.config.schema docs/manifest.md
    doc = Path(sys.argv[1])
    doc.write_text(rewrite_tables(doc.read_text(encoding="utf-8")), encoding="utf-8")
