"""examples/: each example manifest builds end to end (small random stand-ins for its models)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from galleryvis.config.manifest import load_manifest

timm = pytest.importorskip("timm")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: timm's tiny test models (160 px, random weights) in the place of the example's four.
STAND_INS = {"timm:resnet50": "timm:test_resnet", "timm:convnext_tiny": "timm:test_convnext",
             "timm:vit_small_patch16_224": "timm:test_vit", "timm:swin_tiny_patch4_window7_224": "timm:test_vit"}


@pytest.mark.parametrize("example", sorted(p.parent.name for p in EXAMPLES.glob("*/galleryvis.toml")))
def test_every_example_manifest_is_valid(example: str) -> None:
    # what an example lists is checked by parsing it, not against the registry's names: a
    # technique added to galleryvis needs no edit here
    manifest = load_manifest(EXAMPLES / example / "galleryvis.toml")
    assert manifest.images and manifest.models and manifest.techniques


def test_cnn_vs_transformer_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from galleryvis.build.pipeline import Options, build
    from galleryvis.render import pages

    folder = tmp_path / "examples" / "cnn_vs_transformer"
    shutil.copytree(EXAMPLES / "cnn_vs_transformer", folder)
    shutil.copytree(EXAMPLES.parent / "input_images", tmp_path / "input_images")
    text = (folder / "galleryvis.toml").read_text(encoding="utf-8")
    for name, stand_in in STAND_INS.items():
        text = re.sub(rf'name = "{re.escape(name)}"', f'name = "{stand_in}"\nid = "{name}"\nweights = "none"', text)
    text = text.replace("steps = 16", "steps = 2")
    (folder / "galleryvis.toml").write_text(text, encoding="utf-8")
    # this checkout's templates, whichever checkout the installed package points at
    monkeypatch.setattr(pages, "_resources", lambda: EXAMPLES.parent / "templates")
    pages._environments.cache_clear()
    try:
        manifest = load_manifest(folder / "galleryvis.toml")
        assert [m.id for m in manifest.models] == list(STAND_INS)
        result = build(manifest, Options(quiet=True))
    finally:
        pages._environments.cache_clear()
    assert (result.computed, result.failed) == (2 * 4 * 4, 0)  # images x models x techniques
    assert (folder / "site" / "index.html").is_file()


@pytest.mark.slow
def test_segmentation_builds(tmp_path: Path) -> None:
    """The segmentation example at 96 px: every cell computed, the region column named."""
    import json

    from galleryvis.build.pipeline import Options, build

    folder = tmp_path / "examples" / "segmentation"
    shutil.copytree(EXAMPLES / "segmentation", folder)
    shutil.copytree(EXAMPLES.parent / "input_images", tmp_path / "input_images")
    text = (folder / "galleryvis.toml").read_text(encoding="utf-8")
    (folder / "galleryvis.toml").write_text(text.replace("size = 320", "size = 96").replace("steps = 16", "steps = 2"),
                                            encoding="utf-8")
    result = build(load_manifest(folder / "galleryvis.toml"), Options(quiet=True, batch_size=2))
    assert (result.computed, result.failed) == (3 * 4, 0)  # images x techniques
    cells = json.loads((folder / "site" / "gallery.json").read_text(encoding="utf-8"))["cells"]
    assert {c["target_label"] for c in cells if c["image_id"].startswith("cameraman-2")} == {
        "person, over the given region"}
