"""Ground truth in the manifest: `[[images]] mask = "..."` or `box = [x0, y0, x1, y1]`, checked
against the photo, with errors naming the image entry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from galleryvis import metrics
from galleryvis.errors import ManifestError
from galleryvis.config.manifest import parse_manifest


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    Image.new("RGB", (40, 30)).save(tmp_path / "cat.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "dog.png")
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:20, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "cat-mask.png")
    Image.new("L", (20, 30)).save(tmp_path / "small-mask.png")
    Image.new("L", (40, 30)).save(tmp_path / "empty-mask.png")
    return tmp_path


def _parse(root: Path, *images: dict):
    return parse_manifest({"images": list(images), "models": [{"name": "efficientnet_lite0"}]},
                          path=Path("gallery.toml"), root=root)


def _errors(root: Path, *images: dict) -> list[str]:
    with pytest.raises(ManifestError) as error:
        _parse(root, *images)
    return error.value.errors


def test_masks_and_boxes_are_read_per_image(root: Path) -> None:
    m = _parse(root, {"path": "cat.png", "mask": "cat-mask.png"}, {"path": "dog.png", "box": [1, 2, 30.5, 29]},
               {"path": "dog.png", "target": 3, "box": [[0, 0, 5, 5], [10, 10, 40, 30]]}, {"path": "*.png"})
    by = {(s.path.name, s.target): s for s in m.images}
    assert by[("cat.png", None)].mask == root / "cat-mask.png" and by[("cat.png", None)].box is None
    assert by[("dog.png", None)].box == ((1, 2, 30.5, 29),) and by[("dog.png", None)].mask is None
    assert by[("dog.png", 3)].box == ((0, 0, 5, 5), (10, 10, 40, 30))
    assert by[("cat-mask.png", None)].mask is None  # the glob's photos have none
    boxes = metrics.box_mask(by[("dog.png", 3)].box, 30, 40)
    assert boxes.sum() == 25 + 30 * 20


@pytest.mark.parametrize("entry, words", [
    ({"path": "cat.png", "mask": "nope.png"}, "images[0].mask: mask file 'nope.png': no such file"),
    ({"path": "cat.png", "mask": "small-mask.png"}, "images[0].mask: 'small-mask.png' is 20 x 30 pixels, the photo "
                                                    "'cat.png' 40 x 30"),
    ({"path": "cat.png", "mask": "empty-mask.png"}, "images[0].mask: 'empty-mask.png' has no object pixel"),
    ({"path": "cat.png", "box": [0, 0, 41, 10]}, "images[0].box: box [0.0, 0.0, 41.0, 10.0] lies outside the photo "
                                                "'cat.png' (40 x 30 pixels)"),
    ({"path": "cat.png", "box": [5, 0, 1, 10]}, "images[0].box: box [5, 0, 1, 10] must have x0 < x1 and y0 < y1"),
    ({"path": "cat.png", "box": [1, 2, 3]}, "images[0].box: expected a box [x0, y0, x1, y1] (4 numbers)"),
    ({"path": "cat.png", "box": "left"}, "images[0].box: expected a box"),
    ({"path": "cat.png", "box": [0, 0, 1, 1], "mask": "cat-mask.png"}, "images[0].box: give the object's mask or "
                                                                      "its box, not both"),
    ({"path": "*.png", "box": [0, 0, 1, 1]}, "images[0].box: needs `path` to name one image file, not the glob"),
])
def test_a_bad_mask_or_box_is_an_error_naming_the_image(root: Path, entry: dict, words: str) -> None:
    errors = _errors(root, entry)
    assert len(errors) == 1 and errors[0].startswith("gallery.toml: " + words), errors
