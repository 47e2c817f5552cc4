"""``galleryvis explain``: the map over the whole photo, the line it prints, the format the
suffix names, and errors that name the flag the user typed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from galleryvis.render import postprocess
from galleryvis.cli import main
from galleryvis.errors import ManifestError
from galleryvis.build.explain import Explained, confidence_text, flagged, output_problem
from galleryvis.storage.images import central_square
from galleryvis.storage.images import fit

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"


# -- pictures (postprocess, no model) ---------------------------------------------------------------
@pytest.mark.parametrize("size, crop_pct", [((640, 400), 1.0), ((300, 451), 0.875), ((64, 64), 0.9)])
def test_central_square_is_what_fit_resamples(size, crop_pct):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    box = central_square(*size, crop_pct)
    expected = photo.resize((32, 32), Image.Resampling.BICUBIC, box=box)
    assert np.array_equal(np.asarray(fit(photo, 32, crop_pct)), np.asarray(expected))


def _grey_photo(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (128, 128, 128))


def test_the_map_lands_where_the_model_saw_it_and_the_sides_stay_the_photo():
    photo = _grey_photo(640, 400)
    cam = np.zeros((1, 224, 224), np.float32)
    cam[0, :112, :112] = 1.0  # the top-left quarter of what the model saw
    box = central_square(640, 400)
    assert box == (120.0, 0.0, 520.0, 400.0)
    out = np.asarray(postprocess.on_photo("cam", cam, photo, box)).astype(int)
    assert out.shape == (400, 640, 3)
    hot, cold = out[100, 220], out[300, 420]  # inside the box: its top-left and bottom-right quarters
    top = postprocess.apply_colormap(np.array(1.0), "inferno").astype(int)
    bottom = postprocess.apply_colormap(np.array(0.0), "inferno").astype(int)
    assert np.abs(hot - (top + 128) // 2).max() <= 1 and np.abs(cold - (bottom + 128) // 2).max() <= 1
    assert (out[:, :100] == 128).all() and (out[:, 540:] == 128).all()  # the sides: the photo as it is
    line = out[200, 110:130]  # across the left edge of the box: a black line, then a white one
    assert (line == 0).all(axis=1).any() and (line == 255).all(axis=1).any()


def test_a_photo_the_model_saw_whole_has_no_outline():
    cam = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
    photo = _grey_photo(100, 100)
    out = np.asarray(postprocess.on_photo("cam", cam, photo, central_square(100, 100)))
    assert out.shape == (100, 100, 3)
    assert not (out == 255).all(axis=2).any() and not (out == 0).all(axis=2).any()


def test_signed_maps_use_the_diverging_colormap_and_images_are_refused():
    signed = np.zeros((3, 8, 8), np.float32)
    signed[:, :4] = -1.0
    signed[:, 4:] = 1.0
    out = np.asarray(postprocess.on_photo("signed", signed, _grey_photo(8, 8), (0, 0, 8, 8), alpha=1.0))
    assert out[0, 0, 2] > out[0, 0, 0] and out[7, 0, 0] > out[7, 0, 2]  # blue where negative (top), red where positive
    with pytest.raises(ValueError, match="no display values"):
        postprocess.on_photo("image", np.zeros((3, 8, 8)), _grey_photo(8, 8), (0, 0, 8, 8))
    with pytest.raises(ValueError, match="misses"):
        postprocess.on_photo("cam", np.zeros((1, 8, 8)), _grey_photo(8, 8), (9, 9, 20, 20))


def test_the_raw_picture_is_the_grey_map():
    cam = np.random.default_rng(1).random((1, 16, 16)).astype(np.float32)
    grey = postprocess.raw_picture("cam", cam)
    (_, _, gallery_map), *_ = postprocess.variants("cam", cam, None)
    assert np.array_equal(np.asarray(grey), np.asarray(gallery_map))


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".jpg", b"\xff\xd8"), (".JPEG", b"\xff\xd8"),
                                           (".webp", b"RIFF")])
def test_pictures_are_written_in_the_format_their_suffix_names(tmp_path, suffix, magic):
    path = tmp_path / f"out{suffix}"
    postprocess.save_picture(_grey_photo(20, 10), path)
    assert path.read_bytes().startswith(magic) and Image.open(path).size == (20, 10)
    with pytest.raises(ValueError, match="not a picture format"):
        postprocess.save_picture(_grey_photo(2, 2), tmp_path / "out.gif")


# -- flags ----------------------------------------------------------------------------------------------
def test_manifest_fields_are_reported_as_the_flags_that_set_them():
    exc = ManifestError([
        "default manifest: techniques[0].name: unknown technique 'gradcma' (did you mean: gradcam?)",
        "default manifest: images[0].target: model 'm' has no class 'tabbby'",
        "default manifest: models[0].layers.gradcam: model 'm' has no layer 'foo'",
        "default manifest: techniques[0].params.steps: gradcam: unknown parameter 'steps'",
        "default manifest: gallery.device: unknown device 'tpu'",
        "default manifest: something else entirely",
    ])
    assert flagged(exc).errors == [
        "--technique: unknown technique 'gradcma' (did you mean: gradcam?)",
        "--target: model 'm' has no class 'tabbby'",
        "--layer: model 'm' has no layer 'foo'",
        "--param: gradcam: unknown parameter 'steps'",
        "--device: unknown device 'tpu'",
        "default manifest: something else entirely",
    ]


def test_the_output_suffix_is_checked_first():
    assert output_problem(Path("a.png"), None) == "" and output_problem(Path("a.npy"), "raw") == ""
    assert output_problem(Path("a.gif"), None).startswith("-o: 'a.gif' names no format")
    assert "--variant raw" in output_problem(Path("a.npy"), "heatmap")


# -- the command ------------------------------------------------------------------------------------------
@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _explain(*args: str):
    result = CliRunner().invoke(main, ["explain", str(PHOTOS / "cat.png"), *args])
    assert "Traceback" not in result.output, result.output
    return result


def test_explain_writes_the_map_over_the_whole_photo_and_says_what_it_explained(here):
    result = _explain("-o", "cat.png")
    assert result.exit_code == 0, result.output
    assert Image.open(here / "cat.png").size == Image.open(PHOTOS / "cat.png").size == (451, 300)
    (line,) = result.output.splitlines()
    assert line.startswith("efficientnet_lite0: Grad-CAM for ") and line.endswith(" -> cat.png")
    assert "probability " in line and "random weights" not in line
    # the cache holds the map: every other format of the same cell comes from it
    jpg = _explain("-o", "cat.jpg")
    assert jpg.exit_code == 0 and (here / "cat.jpg").read_bytes()[:2] == b"\xff\xd8"
    jpg_pixels, png_pixels = (np.asarray(Image.open(here / name), int) for name in ("cat.jpg", "cat.png"))
    assert np.abs(jpg_pixels - png_pixels).mean() < 4
    raw = _explain("-o", "cat.npy")
    assert raw.exit_code == 0 and np.load(here / "cat.npy").shape == (1, 224, 224)
    grey = _explain("--variant", "raw", "-o", "grey.webp")
    assert grey.exit_code == 0 and Image.open(here / "grey.webp").size == (224, 224)
    overlay = _explain("--variant", "overlay", "-o", "overlay.png")
    assert overlay.exit_code == 0 and Image.open(here / "overlay.png").size == (224, 224)


def test_explain_says_when_the_weights_are_random(here):
    result = _explain("--weights", "none", "--technique", "vanilla", "-o", "v.png")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("efficientnet_lite0 (random weights): Vanilla")


def test_a_synthesis_says_what_it_made_and_no_probability(here):
    result = _explain("--technique", "deep_dream", "--param", "steps=1", "--param", "octaves=1", "-o", "d.png")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"efficientnet_lite0: Deep Dream for channel \d+ of \S+ -> d\.png\n", result.output)
    assert Image.open(here / "d.png").size == (224, 224)  # a picture the model made, not a map over the photo


def test_the_line_names_the_random_weights_and_leaves_out_what_is_unknown():
    line = Explained(Path("o.png"), "resnet18", True, "Inverted Representation", "", None).line()
    assert line == "resnet18 (random weights): Inverted Representation -> o.png"


def test_the_confidence_is_named_by_what_it_is_for_the_models_task():
    assert confidence_text("classification", 0.354) == "probability 35.4 %"
    assert confidence_text("multilabel", 0.9) == "probability 90.0 %"
    assert confidence_text("image-text", 0.5) == "probability 50.0 % over the prompts"
    assert confidence_text("segmentation", 0.18) == "18 % of the pixels"
    assert confidence_text("segmentation", 0.001) == "<1 % of the pixels"
    assert confidence_text("detection", 0.912, (1, 3)) == "score 0.91, box 1 of 3"


@pytest.mark.slow
def test_explain_on_a_detector_names_the_detections_score_not_a_probability(here, monkeypatch):
    """A torchvision Faster R-CNN (MobileNetV3 320 FPN) with seeded random weights saved
    locally, its "cat" logit raised so that its detections pass the default score threshold:
    the line names the explained detection's score and place, as the gallery's header does, and
    the picture written is the map over the photo with that detection outlined and tagged
    within what the model saw."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    from galleryvis.render import postprocess

    drawn = []

    def outline_box(img, box, text=""):
        drawn.append((box, text, real(img, box, text)))
        return drawn[-1][2]

    real = postprocess.outline_box
    monkeypatch.setattr(postprocess, "outline_box", outline_box)

    torch.manual_seed(0)
    model = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[17] += 4.0  # COCO's "cat"
    torch.save(model.state_dict(), here / "det.pth")
    result = _explain("--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", "det.pth", "-o", "det.png")
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    assert re.fullmatch(r"fasterrcnn_mobilenet_v3_large_320_fpn: Grad-CAM for 'cat' \(class 17, score 0\.\d\d, "
                        r"box 1 of \d+\) -> det\.png", line), line
    assert "probability" not in line
    box, text, picture = [d for d in drawn if d[1]][-1]  # the last one tagged: the explained detection's
    photo = Image.open(PHOTOS / "cat.png")
    side = min(photo.size)
    left, top = (photo.width - side) / 2, (photo.height - side) / 2
    assert re.fullmatch(r"cat 0\.\d\d", text) and box[0] < box[2] and box[1] < box[3]
    assert left <= box[0] and top <= box[1] and box[2] <= left + side and box[3] <= top + side
    assert np.array_equal(np.asarray(Image.open(here / "det.png").convert("RGB")), np.asarray(picture.convert("RGB")))


@pytest.mark.parametrize("args, start", [
    (["--technique", "gradcma"], "error: --technique: unknown technique 'gradcma' (did you mean: gradcam"),
    (["--target", "tabbby"], "error: --target: model 'efficientnet_lite0' has no class 'tabbby' (did you mean: tabby"),
    (["--target", "5000"], "error: --target: class index 5000 is out of range"),
    (["--model", "efficientnet_lite"], "error: --model: unknown model 'efficientnet_lite' (did you mean: "
                                       "efficientnet_lite0,"),
    (["--layer", "nope"], "error: --layer: model 'efficientnet_lite0' has no layer 'nope'"),
    (["--param", "steps=3"], "error: --param: gradcam: unknown parameter 'steps'"),
    (["--device", "tpu"], "error: --device: unknown device 'tpu'"),
    (["--variant", "heatmapp"], "error: --variant: gradcam has no variant 'heatmapp' (did you mean: heatmap"),
    (["-o", "x.gif"], "error: -o: 'x.gif' names no format"),
])
def test_explain_errors_name_the_flag(here, args, start):
    result = _explain(*args, *([] if "-o" in args else ["-o", "x.png"]))
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(start), line
    assert "manifest" not in line and "[0]" not in line


def test_explain_as_a_command_on_a_wide_photo(tmp_path):
    """The installed command, on a 640 x 427 photo with the bundled EfficientNet-Lite0: the
    whole photo comes back, what the model saw outlined."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-m", "galleryvis", "explain", str(PHOTOS / "rocket.jpg"),
                           "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "rocket.webp")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("efficientnet_lite0: Grad-CAM for ")
    assert done.stdout.rstrip().endswith(f"-> {tmp_path / 'rocket.webp'}") and done.stderr == ""
    picture = np.asarray(Image.open(tmp_path / "rocket.webp").convert("RGB")).astype(int)
    assert picture.shape == (427, 640, 3)
    photo = np.asarray(Image.open(PHOTOS / "rocket.jpg").convert("RGB")).astype(int)
    sides = np.abs(picture[:, :100] - photo[:, :100]).mean()
    middle = np.abs(picture[:, 200:440] - photo[:, 200:440]).mean()
    assert sides < 4 < middle  # the sides as photographed (lossy WebP), the map over the middle
