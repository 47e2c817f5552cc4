"""A gallery's crp row: its cells equal galleryvis.concepts on the same inputs, captions link to
the concept atlas, and the atlas lists every top-k concept, the largest mean drop first."""
from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from galleryvis.attribution.concepts import concepts
from galleryvis.build.jobs import workspace
from galleryvis.build.pipeline import Options, Summary, build
from galleryvis.build.sitewriter import concept_atlases
from galleryvis.config.manifest import load_manifest
from galleryvis.render.grid import concept_caption
from galleryvis.render.records import Cell, Concept, Gallery, Variant

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"
TOP_K = 3

MANIFEST = f"""
[gallery]
title = "concepts"

[[images]]
path = "cat.png"

[[images]]
path = "coffee.png"

[[models]]
name = "resnet18"
weights = "none"
size = 64

[[techniques]]
name = "crp"
params = {{ top_k = {TOP_K} }}
"""


class _Links(HTMLParser):
    """Every ``href`` and ``id`` of a page, and each concept caption's text with its link."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()
        self.captions: list[tuple[str, str]] = []
        self._in_caption = 0
        self._href = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        if a.get("href"):
            self.hrefs.append(a["href"] or "")
        if tag == "span" and a.get("class") == "concept-caption":
            self._in_caption = 1
        elif self._in_caption and tag == "a":
            self._href = a.get("href") or ""

    def handle_data(self, data: str) -> None:
        if self._in_caption and data.strip():
            self.captions.append((data.strip(), self._href))

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_caption = 0


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Summary]:
    root = tmp_path_factory.mktemp("crp")
    for name in ("cat.png", "coffee.png"):
        shutil.copy(PHOTOS / name, root / name)
    (root / "galleryvis.toml").write_text(MANIFEST)
    summary = build(load_manifest(root / "galleryvis.toml"), Options(quiet=True))
    assert not summary.failures
    return root, summary


def _gallery(root: Path) -> Gallery:
    return Gallery.from_dict(json.loads((root / "site" / "gallery.json").read_text()))


@pytest.mark.slow
def test_cells_equal_concepts_on_the_same_inputs(built: tuple[Path, Summary]) -> None:
    root, summary = built
    manifest = load_manifest(root / "galleryvis.toml")
    ws = workspace(manifest)
    adapter = ws.models["resnet18"]
    gallery = _gallery(root)
    for job in summary.jobs:
        x = ws.images[job.image.id].input_for(adapter)[None]
        want = concepts(adapter.model, x, layer="layer4", top_k=TOP_K, mean=adapter.mean, std=adapter.std)
        cell = gallery.cell("resnet18", job.image.id, "crp")
        assert cell is not None and cell.status == "ok" and len(cell.concepts) == TOP_K
        assert [c.channel for c in cell.concepts] == want.channels[0].tolist()
        assert want.drops is not None and want.random_drops is not None
        np.testing.assert_allclose([c.share for c in cell.concepts], want.shares[0].numpy(), atol=1e-6)
        np.testing.assert_allclose([c.drop for c in cell.concepts], want.drops[0].numpy(), atol=1e-6)
        assert cell.random_drop == pytest.approx(float(want.random_drops[0]), abs=1e-6)
        assert cell.random_channels == want.random_channels == 16
        assert job.result is not None and job.result.shape == tuple(want.maps[0].shape)
        for got, ref in zip(torch.from_numpy(job.result), want.maps[0]):
            r = float(torch.corrcoef(torch.stack([got.flatten(), ref.flatten()]))[0, 1])
            assert r > 0.9999, r
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


@pytest.mark.slow
def test_a_rebuild_from_the_cache_writes_the_same_records(built: tuple[Path, Summary]) -> None:
    root, _ = built
    before = (root / "site" / "gallery.json").read_bytes()
    again = build(load_manifest(root / "galleryvis.toml"), Options(quiet=True))
    assert again.cached == 2 and again.computed == 0
    assert (root / "site" / "gallery.json").read_bytes() == before
    assert all(j.concepts is not None for j in again.jobs)


@pytest.mark.slow
def test_captions_name_channel_and_share_and_link_to_the_atlas(built: tuple[Path, Summary]) -> None:
    root, _ = built
    gallery = _gallery(root)
    page = _parse(root / "site" / "model-resnet18.html")
    want = [(concept_caption(c.channel, c.share), f"atlas-resnet18-crp.html#concept-{c.channel}")
            for img in gallery.images for c in gallery.cell("resnet18", img.id, "crp").concepts]  # type: ignore[union-attr]
    assert page.captions == want
    assert all(re.fullmatch(r"ch \d+ · -?\d+ %", text) for text, _ in page.captions)
    assert "atlas-resnet18-crp.html" in page.hrefs  # the model page links its atlas
    assert "atlas-resnet18-crp.html" in _parse(root / "site" / "index.html").hrefs


@pytest.mark.slow
def test_the_atlas_lists_the_union_of_top_k_concepts_by_mean_drop(built: tuple[Path, Summary]) -> None:
    root, _ = built
    gallery = _gallery(root)
    drops: dict[int, list[float]] = {}
    for img in gallery.images:
        for c in gallery.cell("resnet18", img.id, "crp").concepts:  # type: ignore[union-attr]
            drops.setdefault(c.channel, []).append(c.drop)  # type: ignore[arg-type]
    want = sorted(drops, key=lambda ch: (-sum(drops[ch]) / len(drops[ch]), ch))
    html = (root / "site" / "atlas-resnet18-crp.html").read_text(encoding="utf-8")
    assert [int(ch) for ch in re.findall(r'<li id="concept-(\d+)">', html)] == want
    (atlas,) = gallery.atlases
    assert [c.channel for c in atlas.concepts] == want and atlas.layer == "layer4"
    for entry in atlas.concepts:
        assert entry.drop == pytest.approx(float(np.mean(drops[entry.channel])))
        assert len(entry.appearances) == len(drops[entry.channel])
        assert entry.feature is None  # no filter visualization row in this gallery


@pytest.mark.slow
def test_every_local_link_of_the_site_resolves(built: tuple[Path, Summary]) -> None:
    site = built[0] / "site"
    pages = {p.name: _parse(p) for p in site.glob("*.html")}
    checked = 0
    for name, page in pages.items():
        for href in page.hrefs:
            if re.match(r"[a-z]+:", href):
                continue
            target, _, anchor = href.partition("#")
            target = target or name
            assert (site / target).is_file(), f"{name}: {href}"
            if anchor and target.endswith(".html"):
                assert anchor in pages[target].ids, f"{name}: {href}"
                checked += 1
    assert checked > 10


def _cell(image: str, channels: list[int], drops: list[float], random: float) -> Cell:
    pic = Variant("diverging", "Signed map", "a.webp", "t.webp", "alt")
    return Cell("m", image, "crp", 1, "cat", "ok", concepts=[Concept(c, 0.1 * (3 - i), d, pic)
                                                              for i, (c, d) in enumerate(zip(channels, drops))],
                random_drop=random, random_channels=16)


def test_the_atlas_takes_a_filter_visualization_of_the_same_channel_and_layer() -> None:
    model = SimpleNamespace(id="m")
    crp = [SimpleNamespace(model=model, tech=SimpleNamespace(id="crp"), concepts={"layer": "layer4"}, unit=None,
                           layer="layer4") for _ in range(2)]
    cells = [_cell("a", [5, 7], [0.2, 0.1], 0.01), _cell("b", [7, 9], [0.5, -0.1], 0.03)]
    feature = Variant("image", "Image", "f.webp", "ft.webp", "feature")
    fv = [SimpleNamespace(model=model, tech=SimpleNamespace(id="fv"), concepts=None, unit=u, layer=lay)
          for u, lay in ((7, "layer4"), (9, "layer3"))]
    fv_cells = [Cell("m", "a", "fv", None, "channel 7", "ok", variants=[feature]),
                Cell("m", "b", "fv", None, "channel 9", "ok", variants=[feature])]
    (atlas,) = concept_atlases([*crp, *fv], [*cells, *fv_cells])  # type: ignore[list-item]
    assert [c.channel for c in atlas.concepts] == [7, 5, 9]  # mean drops 0.3, 0.2, -0.1
    by = {c.channel: c for c in atlas.concepts}
    assert by[7].feature == feature and by[7].feature_technique == "fv"
    assert by[9].feature is None  # that filter visualization is of another layer
    assert by[7].random_drop == pytest.approx(0.02)
    assert [a.image_id for a in by[7].appearances] == ["b", "a"]  # the larger share first
    assert [(k.label, k.images) for k in by[7].classes] == [("cat", 2)]


def test_the_registered_crp_is_one_chunk_of_concepts() -> None:
    import torchvision

    from galleryvis import registry
    from galleryvis.attribution.concepts import layer_call

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tech = registry.get("crp")
    assert tech.family == "concepts" and tech.params["top_k"] == 4
    with layer_call(model, x, [3, 5], "layer3", None) as call:
        (ctx,) = list(call.contexts())
        got = tech.fn(ctx, layer=call.layer, top_k=2, random_channels=4, gamma=0.5)
    want = concepts(model, x, [3, 5], "layer3", top_k=2, random_channels=4, gamma=0.5)
    assert torch.equal(got.channels, want.channels) and got.random_channels == want.random_channels == 4
    for a, b in zip((got.shares, got.maps, got.drops, got.random_drops),
                    (want.shares, want.maps, want.drops, want.random_drops)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        tech.fn(ctx, layer="layer3", top_k=0)
