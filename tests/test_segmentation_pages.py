"""A segmentation model's pages: its "Prediction" row (the model's label map over each image,
with a legend of its classes) and the region a target gives, outlined on the original image.

The label map is checked against the model itself: the argmax over classes of a tiny Hugging
Face SegFormer's logits (at a quarter of the input's resolution), repeated to the crop's
pixels, pixel by pixel."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGES
from PIL import Image

from galleryvis.render import postprocess

transformers = pytest.importorskip("transformers")

SIZE = 64
LEFT = SIZE // 2  # the region: the photo's left half


def tiny_segformer(folder: Path) -> None:
    """A seeded 6-class SegFormer (logits at 1/4 of the input), saved as a Hugging Face folder."""
    torch.manual_seed(3)
    config = transformers.SegformerConfig(num_labels=6, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32],
                                          decoder_hidden_size=32, num_attention_heads=[1, 1, 2, 2],
                                          id2label={i: f"part {i}" for i in range(6)},
                                          label2id={f"part {i}": i for i in range(6)})
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, object, Path]:
    """A gallery of the SegFormer on the cat (its top-1 class) and on the cat with the left half
    as the region of class 2; its folder, records, the loaded model and the model's folder."""
    from galleryvis.build.pipeline import Options, build
    from galleryvis.config.manifest import load_manifest
    from galleryvis.sources.loading import load_model

    root = tmp_path_factory.mktemp("segpages")
    tiny_segformer(root / "seg")
    cat = IMAGES / "cat.png"
    with Image.open(cat) as img:
        mask = Image.new("L", img.size, 0)
        mask.paste(255, (0, 0, img.width // 2, img.height))
    mask.save(root / "left.png")
    (root / "galleryvis.toml").write_text(
        f'[[images]]\npath = "{cat}"\n\n[[images]]\npath = "{cat}"\ntarget = {{ class = 2, mask = "left.png" }}\n\n'
        f'[[models]]\nname = "hf:seg"\nsize = {SIZE}\n\n[[techniques]]\nname = "gradcam"\n', encoding="utf-8")
    manifest = load_manifest(root / "galleryvis.toml")
    summary = build(manifest, Options(quiet=True, batch_size=2))
    assert (summary.computed, summary.failed) == (2, 0)
    site = manifest.gallery.output
    records = json.loads((site / "gallery.json").read_text(encoding="utf-8"))
    return site, records, load_model(manifest.models[0], root, torch.device("cpu")), root / "seg"


def _by_hand(adapter: object, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cat as the model sees it, (H, W, 3); the label map of the SegFormer in ``folder``
    (loaded by transformers) at its own resolution; and that map repeated to the crop's pixels
    (the nearest label of each pixel centre)."""
    with Image.open(IMAGES / "cat.png") as img:
        crop = adapter.crop(img.convert("RGB"))  # type: ignore[attr-defined]
        x = adapter.preprocess(img.convert("RGB"))[None]  # type: ignore[attr-defined]
    model = transformers.SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(pixel_values=x).logits[0]
    small = logits.argmax(0).numpy()
    f = SIZE // small.shape[0]
    assert f == 4 and small.shape == (SIZE // 4, SIZE // 4)
    return np.asarray(crop).astype(int), small, np.repeat(np.repeat(small, f, 0), f, 1)


def test_the_prediction_is_the_models_argmax_label_map(built) -> None:
    site, records, adapter, folder = built
    crop, small, labels = _by_hand(adapter, folder)
    assert len(np.unique(small)) >= 3, "degenerate model: one class everywhere"
    model = records["models"][0]
    for image in records["images"]:
        seg = model["segmentations"][image["id"]]
        png = np.asarray(Image.open(site / seg["labels"]))
        assert png.dtype == np.uint8 and np.array_equal(png, labels)  # the label map, pixel by pixel
        picture = np.asarray(Image.open(site / seg["picture"]["src"]).convert("RGB")).astype(int)
        # read back: each pixel's class is the one whose colour, blended half and half over the
        # photo (gallery alpha 0.5), is nearest to the picture (a lossy WebP)
        classes = np.unique(small)
        candidates = (crop[:, :, None] + postprocess.palette()[classes].astype(int)) / 2  # (H, W, K, 3)
        read = classes[np.abs(picture[:, :, None] - candidates).sum(-1).argmin(-1)]
        explained = next(c["index"] for c in seg["classes"] if c["explained"])
        inside = labels == explained
        near = ~(postprocess._erode(inside, 2) | postprocess._erode(~inside, 2))  # the outline
        agree = (read == labels)[~near].mean()
        err = np.abs(picture - (crop + postprocess.palette()[labels]) / 2)[~near].mean()
        print(f"{image['id']}: picture read back as the label map at {agree:.1%} of the pixels off the "
              f"outline; mean |difference| {err:.1f} / 255")
        assert agree > 0.95
        # on the explained class's inner edge: white
        edge = inside & ~postprocess._erode(inside, 1)
        if edge.any():
            assert picture[edge].mean() > 200


def test_the_label_map_is_cached_by_content_and_kept_by_the_cache_cleaner(built) -> None:
    """The build stores each image's label map under the model's and the image's content (two
    entries of the same photo share one), and ``galleryvis cache clean`` keeps it."""
    from galleryvis.build.jobs import label_map_key, read_images
    from galleryvis.build.pipeline import Options, referenced_keys
    from galleryvis.config.manifest import load_manifest
    from galleryvis.storage.cache import CACHE_DIRNAME, Cache

    site, _, adapter, folder = built
    manifest = load_manifest(site.parent / "galleryvis.toml")
    cache = Cache(site.parent / CACHE_DIRNAME)
    keys = {label_map_key(adapter, img.ref) for img in read_images(manifest)}  # type: ignore[arg-type]
    assert len(keys) == 1
    entry = cache.get(next(iter(keys)))
    assert entry is not None and np.array_equal(entry.array, _by_hand(adapter, folder)[2])
    assert keys <= referenced_keys(manifest, Options(quiet=True))


def test_the_legend_names_the_classes_with_their_share_of_pixels(built) -> None:
    site, records, adapter, folder = built
    _, small, _ = _by_hand(adapter, folder)
    shares = np.bincount(small.ravel(), minlength=6) / small.size
    model = records["models"][0]
    cat, region = records["images"]
    top1 = int(np.argmax(shares[1:]) + 1)  # background (class 0) excepted
    for image, explained in ((cat, top1), (region, 2)):
        classes = model["segmentations"][image["id"]]["classes"]
        want = sorted({k for k in range(6) if shares[k] > 0} | {explained}, key=lambda k: (-shares[k], k))
        assert [c["index"] for c in classes] == want
        for c in classes:
            assert c["label"] == f"part {c['index']}" and c["share"] == pytest.approx(shares[c["index"]], abs=1e-4)
            assert c["colour"] == "#{:02x}{:02x}{:02x}".format(*postprocess.palette()[c["index"]])
            assert c["explained"] == (c["index"] == explained)
    page = next(site.glob("model-*.html")).read_text(encoding="utf-8")
    rows = re.findall(r'<tr id="([^"]+)"', page)
    assert rows[0].endswith("original") and rows[1].endswith("prediction"), rows[:3]  # first after the image
    legend = page.split('id="' + rows[1] + '"')[1].split("</tr>")[0]
    first = model["segmentations"][cat["id"]]["classes"][0]
    assert f"part {first['index']} <b>{first['share'] * 100:.0f} %</b>" in legend
    assert '<li class="explained"' in legend and "label map (PNG)" in legend


def test_the_region_is_outlined_on_the_original_image(built) -> None:
    site, records, adapter, folder = built
    crop, _, _ = _by_hand(adapter, folder)
    model = records["models"][0]
    _, region = records["images"]
    assert list(model["regions"]) == [region["id"]]
    outlined = np.asarray(Image.open(site / model["regions"][region["id"]]["src"]).convert("RGB")).astype(int)
    assert outlined.shape == (SIZE, SIZE, 3)
    # a 1-pixel line at 64 px: white just inside the left half, black just outside; the photo elsewhere
    print(f"columns {LEFT - 1} / {LEFT}: {outlined[:, LEFT - 1].mean():.0f} / {outlined[:, LEFT].mean():.0f}")
    assert outlined[:, LEFT - 1].mean() > 200 and outlined[:, LEFT].mean() < 60
    away = np.r_[0:LEFT - 3, LEFT + 3:SIZE]
    r = np.corrcoef(outlined[:, away].ravel(), crop[:, away].ravel())[0, 1]
    print(f"off the line: Pearson r {r:.4f} with the crop (lossy WebP)")
    assert r > 0.97
    page = next(site.glob("model-*.html")).read_text(encoding="utf-8")
    assert model["regions"][region["id"]]["thumb"] in page  # on the original image row
    # the viewer shows the maps of that column over the outlined crop
    assert f'data-image="{model["regions"][region["id"]]["src"]}"' in page


def test_outline_draws_inside_white_and_outside_black_but_not_the_border() -> None:
    img = Image.new("RGB", (400, 300), (128, 128, 128))
    mask = np.zeros((300, 400), bool)
    mask[100:200, 0:150] = True  # touches the left border
    out = np.asarray(postprocess.outline(img, mask)).astype(int)
    line = 2  # 300 / 200, rounded
    assert (out[150, 148:150] == 255).all() and (out[150, 150:152] == 0).all()  # right edge
    assert (out[100:102, 50] == 255).all() and (out[98:100, 50] == 0).all()  # top edge
    assert (out[150, 0:line] == 128).all()  # the picture's border is no edge
    assert (out[150, 2:146] == 128).all() and (out[150, 153:] == 128).all()
    with pytest.raises(ValueError, match="region is 10x10 but the picture is 400x300"):
        postprocess.outline(img, np.zeros((10, 10), bool))


def test_a_classifiers_records_and_pages_have_no_prediction(tmp_path) -> None:
    from gallery_fixture import make_gallery

    from galleryvis.render import SiteModel

    gallery = make_gallery(tmp_path)
    assert b'"segmentations"' not in gallery.to_json() and b'"regions"' not in gallery.to_json()
    site = SiteModel(gallery)
    labels = [row.label for m in gallery.models for _, table in site.model_tables(m) for row in table.rows]
    assert "Original Image" in labels and "Prediction" not in labels
