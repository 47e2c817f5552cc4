"""A concept atlas's reference examples: per concept the reference set's most relevant and most
active images, equal to galleryvis.reference_examples on the same set, each cropped to crop_box
of its reference heatmap; computed once per model, layer and set, and cached by content."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from galleryvis.attribution.references import crop_box, reference_examples, reference_heatmaps
from galleryvis.build import reference_pass
from galleryvis.build.jobs import workspace
from galleryvis.build.pipeline import Options, Summary, build, referenced_keys
from galleryvis.config.manifest import ManifestError, load_manifest
from galleryvis.render.records import Gallery
from conftest import factory_folder
from galleryvis.storage.cache import CACHE_DIRNAME, Cache
from galleryvis.storage.images import load_image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "input_images"
LAYER = "3"

FACTORY = '''
import torch
from torch import nn


def small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(64, 10))
'''

MANIFEST = f'''
[gallery]
title = "references"

[[images]]
path = "cat.png"

[[images]]
path = "coffee.png"

[[models]]
factory = "refsfactory:small"
id = "small"
size = 64

[[techniques]]
name = "crp"
layer = "{LAYER}"
params = {{ top_k = 3 }}
'''

#: The reference set: crops of the photos, of several sizes (none of them square).
REFERENCES = {"a.jpg": ("cameraman.png", (0, 0, 200, 160)), "b.jpg": ("rocket.jpg", None),
              "c.jpg": ("cat.png", (100, 0, 400, 260)), "sub/d.jpg": ("coffee.png", (0, 40, 300, 250)),
              "sub/e.jpg": ("rocket.jpg", (50, 50, 330, 300)), "f.jpg": ("cameraman.png", (120, 60, 500, 400))}


def _reference_set(root: Path) -> None:
    for name, (photo, box) in REFERENCES.items():
        img = Image.open(PHOTOS / photo).convert("RGB")
        (root / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
        (img.crop(box) if box else img).resize((90, 72)).save(root / "refs" / name, quality=90)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A manifest folder with the factory module (importable while the tests run), two photos and
    a reference set; pages drawn with this checkout's templates."""
    root = tmp_path_factory.mktemp("refatlas")
    (root / "refsfactory.py").write_text(FACTORY, encoding="utf-8")
    for name in ("cat.png", "coffee.png"):
        Image.open(PHOTOS / name).convert("RGB").resize((96, 80)).save(root / name)
    _reference_set(root)
    (root / "galleryvis.toml").write_text(MANIFEST + '\n[concepts]\nreference = "refs/**/*.jpg"\n')
    with factory_folder(root, "refsfactory"):
        yield root


class _Counted:
    """A function counting its calls: ``reference_examples`` (the reference pass's rankings) or
    ``reference_heatmaps`` (its crops)."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)


def _build(root: Path, monkeypatch: pytest.MonkeyPatch, heatmaps: list[int] | None = None,
           quiet: bool = True) -> tuple[Summary, int]:
    """Build the folder's gallery: its summary and how many rankings it computed (``heatmaps``
    gets how many reference heatmap calls)."""
    counted, crops = _Counted(reference_examples), _Counted(reference_heatmaps)
    monkeypatch.setattr(reference_pass, "reference_examples", counted)
    monkeypatch.setattr(reference_pass, "reference_heatmaps", crops)
    summary = build(load_manifest(root / "galleryvis.toml"), Options(quiet=quiet, batch_size=4))
    assert not summary.failures
    if heatmaps is not None:
        heatmaps.append(crops.calls)
    return summary, counted.calls


@pytest.fixture(scope="module")
def built(folder: Path) -> tuple[Path, Summary, int]:
    with pytest.MonkeyPatch.context() as mp:
        summary, calls = _build(folder, mp)
    return folder, summary, calls


def _gallery(root: Path) -> Gallery:
    return Gallery.from_dict(json.loads((root / "site" / "gallery.json").read_text()))


@pytest.mark.slow
def test_the_atlas_shows_reference_examples_equal_to_reference_examples(built: tuple[Path, Summary, int]) -> None:
    root, _, calls = built
    assert calls == 2  # one pass per mode
    manifest = load_manifest(root / "galleryvis.toml")
    files = manifest.concepts.reference
    assert files is not None and [p.relative_to(root / "refs").as_posix() for p in files] == sorted(REFERENCES)
    adapter = workspace(manifest).models["small"]
    x = torch.stack([adapter.preprocess(load_image(p)) for p in files])
    want = {mode: reference_examples(adapter.model, x, None, LAYER, mode=mode, top=4, mean=adapter.mean,
                                     std=adapter.std) for mode in ("relevance", "activation")}
    (atlas,) = _gallery(root).atlases
    assert len(atlas.concepts) >= 3
    html = (root / "site" / "atlas-small-crp.html").read_text(encoding="utf-8")
    for entry in atlas.concepts:
        ch = entry.channel
        for shown, mode in ((entry.most_relevant, "relevance"), (entry.most_active, "activation")):
            ref = want[mode]
            positive = ref.values[ch] > 0  # an image whose share is not positive is no example of it
            assert [e.name for e in shown] == [files[i].name for i in ref.indices[ch][positive].tolist()]
            np.testing.assert_allclose([e.value for e in shown], ref.values[ch][positive].numpy(), rtol=1e-5, atol=1e-7)
            maps = reference_heatmaps(adapter.model, x[ref.indices[ch][positive]], ch, LAYER, ref.positions[ch][positive],
                                      mean=adapter.mean, std=adapter.std)
            assert [tuple(e.box) for e in shown] == [crop_box(m) for m in maps]
            for e in shown:  # the picture: that part of the photo, as wide as the box for its height
                pic = Image.open(root / "site" / e.picture.src)
                r0, r1, c0, c1 = e.box
                assert abs(pic.width / pic.height - (c1 - c0 + 1) / (r1 - r0 + 1)) < 0.05
                assert max(pic.size) == 160 and e.name in e.picture.alt and f"concept {ch}" in e.picture.alt
                assert f'src="{e.picture.src}"' in html
    # the strips, in the order of the records, under each concept's heading
    first = atlas.concepts[0]
    names = re.findall(r'<span class="name" title="([^"]+)">', html.split(f'id="concept-{first.channel}"')[1]
                       .split("<li id=")[0])
    assert names == [e.name for e in first.most_relevant] + [e.name for e in first.most_active]


@pytest.mark.slow
def test_a_rebuild_runs_no_reference_pass_and_a_changed_file_reruns_it(
        built: tuple[Path, Summary, int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    root, _, _ = built
    before = (root / "site" / "gallery.json").read_bytes()
    heatmaps: list[int] = []
    again, calls = _build(root, monkeypatch, heatmaps)
    assert calls == 0 and heatmaps == [0] and again.cached == 2 and again.stages.passes <= 2  # the predictions at most
    assert (root / "site" / "gallery.json").read_bytes() == before
    manifest = load_manifest(root / "galleryvis.toml")  # `cache clean --unreferenced` keeps them
    Cache(root / CACHE_DIRNAME).clean(referenced_keys(manifest, Options()))
    assert _build(root, monkeypatch, heatmaps)[1] == 0 and heatmaps == [0, 0]
    changed = root / "refs" / "b.jpg"
    Image.open(PHOTOS / "cat.png").convert("RGB").resize((70, 90)).save(changed)
    try:
        capsys.readouterr()
        monkeypatch.setenv("GALLERYVIS_PROGRESS_EVERY", "0")
        _, calls = _build(root, monkeypatch, heatmaps, quiet=False)
        assert calls == 2 and heatmaps[-1] > 0
        # its progress, as the cells' (plain lines: no terminal here): its share while it runs, then its step
        lines = capsys.readouterr().err.splitlines()
        assert lines[-1] == f"[1/1] small: reference examples at {LAYER} (eta 0 s)"
        assert re.fullmatch(rf"\[0/1\] small: reference examples at {LAYER} [1-9]\d?%", lines[-2]), lines
    finally:
        _reference_set(root)


def test_the_default_reference_set_is_the_gallerys_images(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = load_manifest(_write(folder, "own.toml", MANIFEST.replace('title = "references"', 'output = "own"')))
    assert manifest.concepts.reference is None
    ws = workspace(manifest)
    refs = reference_pass.ReferenceSet(manifest, ws)
    assert [p.name for p in refs.files] == ["cat.png", "coffee.png"]
    assert refs.shas == tuple(img.ref.sha for img in ws.images.values())


def _write(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


@pytest.mark.parametrize("glob, message", [
    ("refs/*.png", "concepts.reference: no image file matches 'refs/*.png'"),
    ("nothing/", "concepts.reference: 'nothing/': no such file"),
])
def test_a_reference_glob_that_matches_nothing_is_one_manifest_error(folder: Path, glob: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(_write(folder, "bad.toml", MANIFEST + f'\n[concepts]\nreference = "{glob}"\n'))
    (error,) = info.value.errors
    assert error.startswith(f"bad.toml: {message}") and "\n" not in error


def test_an_unreadable_reference_file_is_one_manifest_error_naming_it(folder: Path) -> None:
    (folder / "broken").mkdir(exist_ok=True)
    (folder / "broken" / "x.jpg").write_bytes(b"not a picture")
    manifest = load_manifest(_write(folder, "broken.toml", MANIFEST + '\n[concepts]\nreference = "broken/*.jpg"\n'))
    refs = reference_pass.ReferenceSet(manifest, workspace(manifest))
    with pytest.raises(ManifestError) as info:
        refs.inputs(next(iter(workspace(manifest).models.values())))
    (error,) = info.value.errors
    assert error.startswith("broken.toml: concepts.reference: image ") and "x.jpg" in error and "\n" not in error


def test_a_build_without_a_concept_row_makes_no_reference_pass(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = MANIFEST.replace('name = "crp"', 'name = "gradcam"').replace("params = { top_k = 3 }", "")
    _write(folder, "nocrp.toml", text.replace('title = "references"', 'output = "nocrp"')
           + '\n[concepts]\nreference = "refs/**/*.jpg"\n')
    counted = _Counted(reference_examples)
    monkeypatch.setattr(reference_pass, "reference_examples", counted)
    summary = build(load_manifest(folder / "nocrp.toml"), Options(quiet=True, batch_size=4))
    assert counted.calls == 0 and not summary.failures and "references" in summary.stages.seconds
