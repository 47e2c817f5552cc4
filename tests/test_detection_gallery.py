"""Galleries of object detectors: manifest targets (top1, a class, a box, ``top = K``), the plan's
reference detections against ``targets.Detection`` in the API, the explained box on the pages,
the refusal cells, and a cell's map independent of the other images of its chunk.

A small seeded Faster R-CNN (two convolutions as its backbone, 5 classes) from a factory, 64-px
inputs, ``score_threshold = 0`` so its random weights still give boxes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import galleryvis
from galleryvis import targets
from galleryvis.build.jobs import Job, plan, workspace
from galleryvis.build.pipeline import Options, build
from galleryvis.config.manifest import check_against_models, load_manifest
from galleryvis.errors import ManifestError
from galleryvis.sources.loading import ModelAdapter
from conftest import factory_folder
from galleryvis.storage.cache import Cache

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "input_images"
LABELS = ["background", "cat", "dog", "cup", "car"]

FACTORY = '''
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign


def small():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    backbone.out_channels = 16
    return FasterRCNN(backbone, num_classes=5, min_size=64, max_size=64, box_score_thresh=0.0,
                      rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), rpn_pre_nms_top_n_test=60,
                      rpn_post_nms_top_n_test=20, box_detections_per_img=20)
'''

MODEL = '''
[[models]]
factory = "detfactory:small"
id = "det"
labels = "labels.txt"
size = 64
score_threshold = 0.0
max_detections = 5
'''

TECHNIQUES = '''
[[techniques]]
name = "gradcam"
layer = "backbone.2"
[[techniques]]
name = "vanilla"
[[techniques]]
name = "drise"
params = { masks = 16, cells = 4 }
[[techniques]]
name = "lrp"

[metrics]
enabled = true
sanity = false
steps = 4
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A manifest folder with the factory module (importable while the tests run) and labels;
    pages drawn with this checkout's templates, whichever checkout the installed package points at."""
    root = tmp_path_factory.mktemp("detgallery")
    (root / "detfactory.py").write_text(FACTORY, encoding="utf-8")
    (root / "labels.txt").write_text("\n".join(LABELS), encoding="utf-8")
    with factory_folder(root, "detfactory"):
        yield root


def photo_box(adapter: ModelAdapter, box: Any, photo: tuple[int, int]) -> list[float]:
    """A box in the model input's pixels back in the photo's (the inverse of ``input_box``)."""
    side = min(photo) * adapter.crop_pct
    left, top = (photo[0] - side) / 2, (photo[1] - side) / 2
    f = side / adapter.size
    return [left + box[0] * f, top + box[1] * f, left + box[2] * f, top + box[3] * f]


def manifest_text(images: str, output: str = "site") -> str:
    return f'[gallery]\ntitle = "Detectors"\noutput = "{output}"\n' + images + MODEL + TECHNIQUES


@pytest.fixture(scope="module")
def built(folder: Path) -> dict[str, Any]:
    """The gallery of two photos: cat.png with ``top = 2``, coffee.png with a box target (the
    detector's third detection, a pixel smaller, in the photo's pixels), at batch size 8."""
    coffee = Image.open(PHOTOS / "coffee.png").convert("RGB")
    probe = load_manifest(_write(folder, "probe.toml", manifest_text(f'[[images]]\npath = "{PHOTOS / "coffee.png"}"\n')))
    adapter = workspace(probe).models["det"]
    dets = adapter.detections(adapter.preprocess(coffee)[None])[0]
    asked = [round(float(v) + d, 1) for v, d in zip(photo_box(adapter, dets[2, :4], coffee.size), (1, 1, -1, -1))]
    images = (f'[[images]]\npath = "{PHOTOS / "cat.png"}"\ntop = 2\n'
              f'[[images]]\npath = "{PHOTOS / "coffee.png"}"\n'
              f'target = {{ class = "{LABELS[int(dets[2, 5])]}", box = {asked} }}\n')
    path = _write(folder, "gallery.toml", manifest_text(images))
    manifest = load_manifest(path)
    summary = build(manifest, Options(use_cache=False, batch_size=8, quiet=True))
    site = folder / "site"
    return {"manifest": manifest, "jobs": summary.jobs, "site": site, "asked": asked, "dets": dets,
            "gallery": json.loads((site / "gallery.json").read_text(encoding="utf-8")), "path": path}


def _write(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


def api_target(job: Job, adapter: ModelAdapter) -> targets.Detection:
    """The ``targets.Detection`` the API takes for what a job's image asked."""
    asked = job.image.target
    cls = None if asked.cls is None else LABELS.index(asked.cls)
    box = None if asked.box is None else adapter.input_box(asked.box, Image.open(job.image.path).size)
    return targets.Detection(cls, box, rank=asked.rank, score_threshold=0.0, max_detections=5)


def test_each_cell_explains_the_detection_the_api_resolves_with_the_same_map(built: dict[str, Any]) -> None:
    ws = workspace(built["manifest"])
    adapter = ws.models["det"]
    jobs = [j for j in built["jobs"] if j.tech.name in ("gradcam", "vanilla", "drise")]
    assert {(j.image.name, j.image.target.rank) for j in jobs} == {("cat.png", 1), ("cat.png", 2), ("coffee.png", 1)}
    for job in jobs:
        x = adapter.preprocess(Image.open(job.image.path).convert("RGB"))[None]
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # a detector's input: pixels in [0, 1]
        wanted = api_target(job, adapter)
        ref = targets.resolve(wanted, adapter.model, x, 1).reference()[0]
        assert ref.label == job.target and ref.box.tolist() == pytest.approx(list(job.box), abs=1e-4)
        maps = galleryvis.attribute(adapter.model, x, job.tech.name, target=wanted, layer=job.layer, **job.params)
        expected = maps[0].numpy()
        assert job.result is not None and job.result.shape == expected.shape
        r = np.corrcoef(job.result.ravel(), expected.ravel())[0, 1] if expected.std() > 0 else 1.0
        assert r >= 0.9999 and np.allclose(job.result, expected, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
    # the box target named the detection it was drawn from; the ranks are the two best
    coffee = next(j for j in jobs if j.image.name == "coffee.png")
    assert coffee.rank == (3, 5) and coffee.box == pytest.approx(tuple(built["dets"][2, :4]), abs=1e-4)
    assert sorted(j.rank for j in jobs if j.image.name == "cat.png" and j.tech.name == "gradcam") == [(1, 5), (2, 5)]
    # the cache keys: what each target asked (class, box, rank) and the detection it named
    assert len({j.key for j in built["jobs"]}) == len(built["jobs"])
    assert coffee.covers["target"] == {"detection": [LABELS[coffee.target], tuple(built["asked"]), 1],
                                       "class": coffee.target, "box": [round(v, 3) for v in coffee.box]}


def test_headers_name_the_detection_and_its_place(built: dict[str, Any]) -> None:
    cells = [c for c in built["gallery"]["cells"] if c["technique_id"] == "gradcam"]
    dets = built["dets"]
    coffee = next(c for c in cells if c["image_id"] == "coffee")
    assert coffee["target_label"] == f"{LABELS[int(dets[2, 5])]} {dets[2, 4]:.2f}, box 3 of 5"
    assert coffee["target_index"] == int(dets[2, 5])
    page = (built["site"] / "model-det.html").read_text(encoding="utf-8")
    assert f"Target class: {coffee['target_label']} ({int(dets[2, 5])})" in page
    assert "box 1 of 5" in page and "box 2 of 5" in page
    # the Detections row, with the legend of classes and scores; the original outlined
    assert 'id="cam-detections"' in page and "kept detections, best first" in page
    model = built["gallery"]["models"][0]
    boxes = model["detections"]["coffee"]["boxes"]
    assert [b["score"] for b in boxes] == pytest.approx([round(float(v), 4) for v in dets[:, 4]])
    assert [b["explained"] for b in boxes] == [False, False, True, False, False]
    assert set(model["regions"]) == {"cat", "cat-2", "coffee"} and "detection outlined" in page


def test_the_explained_box_is_drawn_on_the_original_and_every_picture(built: dict[str, Any]) -> None:
    job = next(j for j in built["jobs"] if j.image.name == "coffee.png" and j.tech.name == "gradcam")
    x0, y0, x1, y1 = (round(v) for v in job.box)
    region = np.asarray(Image.open(built["site"] / built["gallery"]["models"][0]["regions"]["coffee"]["src"]))
    cell = next(c for c in built["gallery"]["cells"] if c["image_id"] == "coffee" and c["technique_id"] == "gradcam")
    for picture in [region] + [np.asarray(Image.open(built["site"] / v["src"])) for v in cell["variants"]]:
        # the outline: a white line just inside the box's bottom edge, a black one just outside (lossy WebP)
        inside, outside = picture[min(y1, 63) - 1, x0 + 2:x1 - 2], picture[min(y1 + 1, 63), x0 + 2:x1 - 2]
        if y1 < 63:
            assert inside.mean() > 200 and outside.mean() < 60


def test_techniques_without_detection_show_their_refusal(built: dict[str, Any]) -> None:
    cells = [c for c in built["gallery"]["cells"] if c["technique_id"] == "lrp"]
    assert len(cells) == 3 and all(c["status"] == "failed" for c in cells)
    assert all(c["error"].startswith("TaskError: lrp does not support detection models") for c in cells)
    assert all(c["status"] == "ok" for c in built["gallery"]["cells"] if c["technique_id"] != "lrp")


def test_deletion_and_insertion_read_the_drise_similarity(built: dict[str, Any]) -> None:
    ranking = built["gallery"]["rankings"][0]
    assert "target D-RISE similarity" in ranking["protocol"]
    for job in built["jobs"]:
        if job.tech.name != "lrp":  # the clean image's best match is the reference itself: similarity 1
            assert job.curves["deletion"][0] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_a_cell_does_not_depend_on_the_other_images_of_its_chunk(built: dict[str, Any], folder: Path) -> None:
    text = built["path"].read_text(encoding="utf-8").replace('output = "site"', 'output = "site1"')
    one = build(load_manifest(_write(folder, "one.toml", text)), Options(use_cache=False, batch_size=1, quiet=True))
    by_key = {(j.image.id, j.tech.id): j for j in built["jobs"]}
    for job in one.jobs:
        if job.result is not None:
            np.testing.assert_allclose(job.result, by_key[(job.image.id, job.tech.id)].result, rtol=1e-4, atol=1e-6)


def test_a_box_that_matches_no_detection_is_a_manifest_error(built: dict[str, Any], folder: Path) -> None:
    def message(box: str) -> str:
        images = f'[[images]]\npath = "{PHOTOS / "coffee.png"}"\ntarget = {{ box = {box} }}\n'
        manifest = load_manifest(_write(folder, "nomatch.toml", manifest_text(images)))
        with pytest.raises(ManifestError) as info:
            plan(manifest, workspace(manifest), Cache(None, enabled=False), force=True)
        (line,) = info.value.errors
        assert "\n" not in line
        return line

    where = "nomatch.toml: images[0].target: image 'coffee.png', model 'det': "
    small = message("[101, 1, 107, 7]")  # inside the central crop (x from 100 to 500), far from any detection
    assert small.startswith(where + "no detection matches box [") and "(IoU >= 0.5); the best IoU found is 0." in small
    assert message("[0, 0, 3, 3]") == where + "box [0.0, 0.0, 3.0, 3.0] lies outside the crop of the photo model 'det' sees"


def test_a_box_maps_into_the_model_input_as_the_photo_is_cropped() -> None:
    adapter = ModelAdapter(torch.nn.Identity(), "", "", size=64, crop_pct=0.875)
    photo = (200, 120)
    for box in ([60, 20, 150, 100], [10, 0, 90, 50], [150, 30, 199, 119]):
        mask = Image.new("L", photo, 0)
        mask.paste(255, tuple(box))
        ys, xs = np.nonzero(adapter.crop_mask(mask))
        got = adapter.input_box(box, photo)
        assert got is not None
        assert got == pytest.approx((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), abs=1.0)
        assert all(0 <= v <= 64 for v in got)
    assert adapter.input_box([0, 0, 30, 20], photo) is None  # entirely outside the central crop


def test_detection_keys_are_checked_in_one_line_each(tmp_path: Path) -> None:
    Image.new("RGB", (100, 80)).save(tmp_path / "p.png")
    body = '[[models]]\nname = "resnet18"\nweights = "none"\n'

    def errors(images: str) -> list[str]:
        with pytest.raises(ManifestError) as info:
            load_manifest(_write(tmp_path, "g.toml", images + body))
        return info.value.errors

    one = '[[images]]\npath = "p.png"\n'
    assert errors(one + 'target = { class = "dog", box = [10, 10, 5, 60] }\n') == [
        "g.toml: images[0].target.box: box [10, 10, 5, 60] must have x0 < x1 and y0 < y1"]
    assert errors(one + "target = { box = [10, 10, 500, 60] }\n") == [
        "g.toml: images[0].target.box: box [10.0, 10.0, 500.0, 60.0] lies outside the photo 'p.png' (100 x 80 pixels)"]
    assert errors(one + "target = { box = [1, 2, 3, 4] }\ntop = 2\n") == [
        "g.toml: images[0].top: top = K explains a detector's K best detections; its target gives a box, which "
        "names one"]
    assert errors(one + "top = 0\n") == ["g.toml: images[0].top: must be from 1 to 100, got 0"]
    assert errors(one + 'target = { box = [1, 2, 3, 4], mask = "p.png" }\n') == [
        "g.toml: images[0].target: a target table gives a mask (segmentation) or a box (detection), not both"]
    assert errors('[[images]]\npath = "*.png"\ntarget = { box = [1, 2, 3, 4] }\n') == [
        "g.toml: images[0].target.box: needs `path` to name one image file, not the glob '*.png'"]
    assert errors(one + '[[techniques]]\nname = "gradcam"\ntarget = { box = [1, 2, 3, 4] }\n') == [
        "g.toml: techniques[0].target.box: a box is given per image (`[[images]] target`), not per technique"]
    # box and top are a detector's: a classifier's entry names them, once each
    manifest = load_manifest(_write(tmp_path, "g.toml", one + "top = 2\n" + one + "target = { box = [1, 2, 30, 40] }\n"
                                    + body))
    classifier = SimpleNamespace(task="classification", labels=[], num_classes=1000, module_names=set())
    assert check_against_models(manifest, {"resnet18": classifier}) == [
        "g.toml: images[0].top: top = K (a detector's K best detections) is for detection models; model 'resnet18' "
        "is a classification model",
        "g.toml: images[1].target.box: a box target is for detection models; model 'resnet18' is a classification model"]


@pytest.mark.slow
def test_the_example_builds(folder: Path, tmp_path: Path) -> None:
    """examples/detection at 128 px with seeded random weights saved locally (no download), a
    score threshold of 0, 16 D-RISE masks and no metrics; its box target made one of the random detector's
    detections (a cat's box means nothing to random weights): every cell computed, each column
    named by its detection."""
    import torchvision

    example = tmp_path / "examples" / "detection"
    shutil.copytree(ROOT / "examples" / "detection", example)
    shutil.copytree(PHOTOS, tmp_path / "input_images")
    torch.manual_seed(0)
    model = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None)
    torch.save(model.state_dict(), example / "random.pth")
    text = (example / "galleryvis.toml").read_text(encoding="utf-8")
    for old, new in [('weights = "DEFAULT"', 'weights = "random.pth"'), ("size = 320", "size = 128"),
                     ("score_threshold = 0.5", "score_threshold = 0.0"), ("masks = 200", "masks = 16"),
                     ("enabled = true", "enabled = false")]:
        assert old in text
        text = text.replace(old, new)
    line = next(t for t in text.splitlines() if t.startswith("target = { class = "))
    probe = load_manifest(_write(example, "galleryvis.toml", text.replace(line, "")))
    adapter = workspace(probe).models["fasterrcnn_mobilenet_v3_large_fpn"]
    cat = Image.open(tmp_path / "input_images" / "cat.png").convert("RGB")
    dets = adapter.detections(adapter.preprocess(cat)[None])[0]
    box = [round(float(v) + d, 1) for v, d in zip(photo_box(adapter, dets[1, :4], cat.size), (1, 1, -1, -1))]
    name = adapter.label(int(dets[1, 5]))
    manifest = load_manifest(_write(example, "galleryvis.toml",
                                    text.replace(line, f'target = {{ class = "{name}", box = {box} }}')))
    result = build(manifest, Options(quiet=True, batch_size=2))
    assert (result.computed, result.failed) == (4 * 5, 0)  # columns x techniques
    gallery = json.loads((example / "site" / "gallery.json").read_text(encoding="utf-8"))
    labels = {c["image_id"]: c["target_label"] for c in gallery["cells"] if c["technique_id"] == "gradcam"}
    assert labels["cat"] == f"{name} {dets[1, 4]:.2f}, box 2 of 5"
    assert labels["coffee"].endswith("box 1 of 5") and labels["coffee-2"].endswith("box 2 of 5")
    assert labels["rocket"].endswith("box 1 of 5")
    page = (example / "site" / "model-fasterrcnn-mobilenet-v3-large-fpn.html").read_text(encoding="utf-8")
    assert "kept detections, best first" in page and "detection outlined" in page


def test_boxes_are_drawn_in_their_colours_faint_or_outlined() -> None:
    from galleryvis.render import postprocess

    grey = Image.new("RGB", (100, 80), (100, 100, 100))
    faint = np.asarray(postprocess.draw_boxes(grey, [(10, 10, 50, 40)], ["#ff0000"], alpha=0.5)).astype(int)
    assert np.abs(faint[10, 30] - [178, 50, 50]).max() <= 1 and faint[20, 30].tolist() == [100, 100, 100]
    tagged = np.asarray(postprocess.draw_boxes(grey, [(10, 30, 50, 60)], ["#ffffff"], ["dog 0.91"]))
    assert (tagged[30:42, 10:50] == 255).all(axis=-1).mean() > 0.5  # a white tag at its top-left corner
    outlined = np.asarray(postprocess.outline_box(grey, (10, 10, 50, 40)))
    assert outlined[39, 30].tolist() == [255, 255, 255] and outlined[40, 30].tolist() == [0, 0, 0]
    assert outlined[9, 30].tolist() == [0, 0, 0] and outlined[10, 30].tolist() == [255, 255, 255]
    assert outlined[25, 30].tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="^2 boxes need as many colours and texts, got 1 and 0$"):
        postprocess.draw_boxes(grey, [(0, 0, 1, 1), (1, 1, 2, 2)], ["#000000"])


def test_the_explained_boxs_tag_hides_none_of_the_box() -> None:
    """Above the box where there is room, else below it (a box at the picture's top), else
    inside its top-left corner (a box as tall as the picture)."""
    from galleryvis.render import postprocess

    grey = Image.new("RGB", (100, 80), (100, 100, 100))
    for box, where in [((10, 30, 50, 60), "above"), ((10, 0, 30, 8), "below"), ((5, 2, 95, 78), "inside")]:
        changed = (np.asarray(postprocess.outline_box(grey, box)) != np.asarray(
            postprocess.outline_box(grey, box, "dog 0.91"))).any(-1)
        rows = np.nonzero(changed.any(1))[0]
        x0, y0, x1, y1 = box
        assert changed[:, :x0].sum() == 0 and len(rows), box  # the tag starts at the box's left edge
        if where == "above":
            assert rows.max() < y0 - 1  # the black line just outside the top edge stays
        elif where == "below":
            assert rows.min() > y1  # the black line just outside the bottom edge stays
        else:
            assert rows.min() == y0


def test_the_pages_load_in_a_browser_and_the_viewer_draws_over_the_outlined_detection(built: dict[str, Any]) -> None:
    from test_browser import ARGS, BROKEN_IMAGES, CHROMIUM, sync_api  # skips where chromium or playwright is missing

    region = built["gallery"]["models"][0]["regions"]["coffee"]["src"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto((built["site"] / "model-det.html").as_uri(), wait_until="load")
            assert page.evaluate(BROKEN_IMAGES) == []
            page.locator(f'a.pic[data-image="{region}"]').first.click()
            assert page.locator("dialog.viewer").evaluate("d => d.open")
            assert page.locator(".viewer-base").get_attribute("src") == region
            assert "coffee.png" in page.locator(".viewer-title").inner_text()
            assert problems == []
        finally:
            browser.close()


def test_a_detector_runs_in_chunks_of_the_default_batch_size_untimed(built: dict[str, Any]) -> None:
    from galleryvis.build.executor import chunking_for
    from galleryvis.engine import default_batch_size
    from galleryvis.engine.chunking import Chunking

    adapter = workspace(built["manifest"]).models["det"]
    assert chunking_for(adapter, Cache(None, enabled=False)) == Chunking.of(default_batch_size(adapter.device))


#: Two torchvision detectors of the compare page's test, each with its seed.
PAIR = (("fasterrcnn_mobilenet_v3_large_fpn", 0), ("fasterrcnn_mobilenet_v3_large_320_fpn", 1))
CAT = 17  # COCO's "cat"


def _pair_manifest(folder: Path, photo: Path, target: str) -> Path:
    models = "".join(f'[[models]]\nname = "{name}"\nweights = "{name}.pth"\nsize = 64\nscore_threshold = 0.0\n'
                     f"max_detections = 20\n" for name, _ in PAIR)
    return _write(folder, "pair.toml", f'[gallery]\ntitle = "Two detectors"\noutput = "pair"\n'
                  f'[[images]]\npath = "{photo}"\n{target}\n{models}'
                  '[[techniques]]\nname = "gradcam"\n[[techniques]]\nname = "drise"\n'
                  'params = { masks = 8, cells = 4 }\n')


@pytest.mark.slow
def test_a_compare_page_puts_two_detectors_side_by_side_on_their_best_match_to_one_box(folder: Path) -> None:
    """Two torchvision detectors with seeded random weights saved locally (each's "cat" logit
    raised, so that both find cats), one photo whose target is a cat's box that both find (the
    mean of the two models' closest pair of boxes): each model's cells explain its own best match
    to the box, the compare page names each one in its column's header, starts with each model's
    original image (its detection outlined) and its Detections row, and every picture of a
    column has that column's box outlined."""
    import torchvision
    from torchvision.ops import box_iou

    for name, seed in PAIR:
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        with torch.no_grad():
            model.roi_heads.box_predictor.cls_score.bias[CAT] += 4.0
        torch.save(model.state_dict(), folder / f"{name}.pth")
    path = PHOTOS / "cat.png"
    photo = Image.open(path).convert("RGB")
    ws = workspace(load_manifest(_pair_manifest(folder, path, "")))
    adapters = [ws.models[name] for name, _ in PAIR]
    dets = [a.detections(a.preprocess(photo)[None])[0] for a in adapters]
    boxes = [torch.tensor([photo_box(a, d[:4], photo.size) for d in found]) for a, found in zip(adapters, dets)]
    overlap = box_iou(*boxes)
    i, j = divmod(int(overlap.argmax()), overlap.shape[1])
    assert overlap[i, j] > 0.8 and dets[0][i, 5] == dets[1][j, 5] == CAT
    asked = [round(float(v), 1) for v in (boxes[0][i] + boxes[1][j]) / 2]
    manifest = load_manifest(_pair_manifest(folder, path, f'target = {{ class = "cat", box = {asked} }}'))
    summary = build(manifest, Options(use_cache=False, batch_size=8, quiet=True))
    assert (summary.computed, summary.failed) == (4, 0)
    site = folder / "pair"
    gallery = json.loads((site / "gallery.json").read_text(encoding="utf-8"))
    page = (site / "compare-cat.html").read_text(encoding="utf-8")
    for (name, _), adapter, found in zip(PAIR, adapters, dets):
        # its best match to the box, in its own detections (the model input's pixels)
        ious = box_iou(torch.tensor([adapter.input_box(asked, photo.size)]), torch.from_numpy(found[:, :4]))[0]
        best = int((ious * torch.from_numpy(found[:, 5] == CAT)).argmax())
        label = f"cat {found[best, 4]:.2f}, box {best + 1} of {len(found)}"
        cells = [c for c in gallery["cells"] if c["model_id"] == name]
        assert [(c["target_label"], c["target_index"], c["status"]) for c in cells] == [(label, CAT, "ok")] * 2
        assert f'{name}</a> <span class="target">Target class: {label} ({CAT})</span>' in page
        model = next(m for m in gallery["models"] if m["id"] == name)
        assert [b["explained"] for b in model["detections"]["cat"]["boxes"]] == [k == best for k in range(len(found))]
        x0, y0, x1, y1 = (round(float(v)) for v in found[best, :4])
        pictures = [model["regions"]["cat"]["src"]] + [v["src"] for c in cells for v in c["variants"]]
        rows, cols = slice(y0 + 2, max(y0 + 3, y1 - 2)), slice(x0 + 2, max(x0 + 3, x1 - 2))
        edges = [(np.s_[rows, inside], np.s_[rows, outside]) for inside, outside in ((x0, x0 - 1), (x1 - 1, x1))
                 if 0 <= outside < 64] + [(np.s_[inside, cols], np.s_[outside, cols])
                                          for inside, outside in ((y0, y0 - 1), (y1 - 1, y1)) if 0 <= outside < 64]
        assert edges and len(pictures) == 1 + 2 * 3
        for src in pictures:  # the box's edges inside the picture: white just inside, black just outside
            picture = np.asarray(Image.open(site / src).convert("L"), dtype=float)
            assert picture.shape == (64, 64)
            for inside, outside in edges:
                assert picture[inside].mean() > 170 and picture[outside].mean() < 80, (src, inside)
    assert page.count('class="note">detection outlined</p>') == 2 * 2  # each family's grid: both models' originals
    assert 'id="cam-original"' in page and 'id="cam-detections"' in page and 'id="perturbation-detections"' in page
    assert "each column names the detection that model's maps explain" in page
