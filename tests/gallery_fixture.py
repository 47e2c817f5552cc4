"""A hand-built gallery for the rendering tests: 2 images x 2 models x 4 techniques.

It has one failed cell, an image with a hostile name, a file name with a space and
non-ASCII letters, metrics (one sanity score flagged) and their tables, a ranking, an objective trace and a
plot, so every branch of the pages shows up. Tiny PNGs are written with PIL.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from galleryvis.build.sitewriter import colour_scales, metric_tables, values_script

from galleryvis.render.records import (
    Cell,
    Gallery,
    ImageRecord,
    ModelRecord,
    Prediction,
    Ranking,
    TechniqueRecord,
    Variant,
)

HOSTILE = "<script>alert(1)</script>.png"
HOSTILE_ERROR = "RuntimeError: layer <b>features|3</b> has no 4-D output\nTraceback (most recent call last):\n  <frame>"

IMAGES = [("cat", "Chelsea the cat.png", "img/input/cat.png"),
          ("evil", HOSTILE, "img/input/Café au lait.png")]
MODELS = [("alexnet", "AlexNet", "torchvision AlexNet, ImageNet weights"),
          ("resnet18", "ResNet-18 | [tiny]", "a <em>small</em> residual network")]
# technique id -> (name, title, family, variants (key, label))
TECHNIQUES = {
    "vanilla": ("vanilla", "Vanilla Backpropagation", "attribution",
                [("color", "Colored gradient"), ("saliency", "Saliency")]),
    "gradcam": ("gradcam", "Grad-CAM", "attribution",
                [("map", "Map"), ("heatmap", "Heatmap"), ("overlay", "Heatmap on image")]),
    "integrated_gradients": ("integrated_gradients", "Integrated Gradients", "attribution",
                             [("diverging", "Signed map"), ("saliency", "Saliency")]),
    "filter_visualization": ("user_feature_vis", "Filter Visualization", "synthesis",  # no docs page: the record's text shows
                             [("image", "Image")]),
}
TARGETS = {("alexnet", "cat"): (285, "Egyptian cat"), ("alexnet", "evil"): (56, "king snake"),
           ("resnet18", "cat"): (281, "tabby <cat> | [x]"), ("resnet18", "evil"): (56, "king snake")}
FAILED = ("resnet18", "evil", "gradcam")
EXPECTED_ROWS = [
    "Original Image",
    "Colored Vanilla Backpropagation", "Vanilla Backpropagation Saliency",
    "Grad-CAM Map", "Grad-CAM Heatmap", "Grad-CAM Heatmap on Image",
    "Integrated Gradients Signed Map", "Integrated Gradients Saliency",
]
EXPECTED_SYNTHESIS_ROWS = ["Original Image", "Filter Visualization"]


def _png(root: Path, rel: str, color: tuple[int, int, int], size: int = 8) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return rel


def make_gallery(root: Path) -> Gallery:
    """Write the pictures under ``root`` and return the records that point at them."""
    images = []
    for n, (iid, name, src) in enumerate(IMAGES):
        images.append(ImageRecord(iid, name, _png(root, src, (200, 40 * n, 90), 16),
                                  _png(root, "thumbs/" + src, (200, 40 * n, 90), 8)))
    models = []
    for mid, name, desc in MODELS:
        preds = {
            iid: [Prediction(TARGETS[(mid, iid)][0], TARGETS[(mid, iid)][1], 0.6)]
            + [Prediction(k, f"class {k}", round(0.1 - k / 10000, 4)) for k in (1, 2, 3, 4)]
            for iid, _, _ in IMAGES
        }
        models.append(ModelRecord(mid, name, desc, preds, {"gradcam": "features.10" if mid == "alexnet" else "layer4"}))
    techniques = [
        TechniqueRecord(tid, name, title, family, {"layer": None} if tid == "gradcam" else {"steps": 3},
                        f"*{title}*: a test description with <script>alert(3)</script> and "
                        "[a bad link](javascript:alert(4)).",
                        "Someone et al. 2020, https://arxiv.org/abs/0000.00000; Other et al. 2021, https://doi.org/10.1/x")
        for tid, (name, title, family, _) in TECHNIQUES.items()
    ]
    cells = []
    color = 0
    for mid, _, _ in MODELS:
        for iid, _, _ in IMAGES:
            index, label = TARGETS[(mid, iid)]
            for tid, (_, title, family, variants) in TECHNIQUES.items():
                if (mid, iid, tid) == FAILED:
                    cells.append(Cell(mid, iid, tid, index, label, "failed", error=HOSTILE_ERROR))
                    continue
                vs = []
                for key, vlabel in variants:
                    color += 23
                    rel = f"img/{mid}/{iid}/{tid}-{key}.png"
                    vs.append(Variant(key, vlabel, _png(root, rel, (color % 256, 120, 60)),
                                      _png(root, "thumbs/" + rel, (color % 256, 120, 60), 4), "",
                                      scale="" if key == "image" else key))
                metrics: dict[str, float] = {}
                trace: list[float] = []
                plot = ""
                synth = family == "synthesis"
                if not synth:
                    metrics = {"deletion_auc": 0.125, "insertion_auc": 0.5}
                    if tid == "vanilla":
                        metrics["sanity"] = 0.9 if mid == "alexnet" else 0.1
                else:
                    trace = [0.1, 0.5, float("nan"), 1.5, 2.0]
                    plot = _png(root, f"img/{mid}/{iid}/{tid}-plot.png", (10, 10, 10), 12)
                values = ""
                if tid == "gradcam":  # the viewer's values: a ramp from left to right
                    values = f"img/{mid}/{iid}/{tid}.js"
                    ramp = np.tile(np.linspace(0.0, 1.0, 16, dtype=np.float32), (1, 16, 1))
                    (root / values).write_bytes(values_script(values, "cam", ramp))
                cells.append(Cell(mid, iid, tid, None if synth else index, "" if synth else label, "ok",
                                  vs, metrics=metrics, trace=trace, plot=plot, values=values))
    rankings = [Ranking("alexnet", [
        {"technique": "gradcam", "insertion_auc": 0.5, "deletion_auc": 0.125, "score": 0.375, "baseline": False},
        {"technique": "random", "insertion_auc": 0.2, "deletion_auc": 0.3, "score": -0.1, "baseline": True},
    ], "steps=16, substrate=zeros, softmax")]
    return Gallery(
        title="Test <Gallery> | one",
        description_md="A gallery for **tests**.\n\n# Heading\n\n<script>alert(2)</script>\n",
        images=images, models=models, techniques=techniques, cells=cells, rankings=rankings,
        summary={"computed": 1}, scales=colour_scales(), scaling="each map on its own scale",
        metric_tables=metric_tables(cells, techniques, len(images), [mid for mid, _, _ in MODELS]),
    )
