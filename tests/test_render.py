"""The static site: every view, valid HTML, resolvable links, escaping, determinism."""
from __future__ import annotations

import ast
import re
from dataclasses import replace
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.etree.ElementTree import Element

import html5lib
import pytest

import galleryvis.render as render
from galleryvis.render.records import Ranking, TechniqueRecord, Variant
from galleryvis.render import md_escape, render_site, row_label, site_url, sparkline
from galleryvis.render.pages import random_weights_note

from gallery_fixture import (
    EXPECTED_ROWS,
    EXPECTED_SYNTHESIS_ROWS,
    FAILED,
    HOSTILE,
    IMAGES,
    MODELS,
    TECHNIQUES,
    make_gallery,
)

PAGES = [
    "index.html", "model-alexnet.html", "model-resnet18.html", "compare.html", "compare-cat.html",
    "compare-evil.html", "techniques.html", "technique-vanilla.html", "technique-gradcam.html",
    "technique-integrated-gradients.html", "technique-filter-visualization.html", "build.html",
]
OTHER_FILES = ["gallery.md", "style.css", "gallery.js", "favicon.svg", ".nojekyll"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("site")
    gallery = make_gallery(root)
    written = render_site(gallery, root)
    return root, gallery, written


def parse(path: Path) -> Element:
    return html5lib.parse(path.read_bytes(), treebuilder="etree", namespaceHTMLElements=False)


def text(el: Element) -> str:
    return " ".join("".join(el.itertext()).split())


def has_class(el: Element, name: str) -> bool:
    return name in el.get("class", "").split()


def grids(root: Element) -> list[Element]:
    return [t for t in root.iter("table") if has_class(t, "grid") and not has_class(t, "predictions")]


def expand(table: Element) -> list[list[Element]]:
    """The table's body rows with rowspans filled in, so every row has all its columns."""
    rows: list[list[Element]] = []
    pending: dict[int, tuple[Element, int]] = {}
    for tr in table.find("tbody").findall("tr"):
        row: list[Element] = []
        cells = [c for c in tr if c.tag in ("th", "td")]
        col = 0
        while cells or col in pending:
            if col in pending:
                el, left = pending.pop(col)
                row.append(el)
                if left > 1:
                    pending[col] = (el, left - 1)
            else:
                el = cells.pop(0)
                row.append(el)
                span = int(el.get("rowspan", "1"))
                if span > 1:
                    pending[col] = (el, span - 1)
            col += 1
        rows.append(row)
    return rows


def row_labels(table: Element) -> list[str]:
    out = []
    for tr in table.find("tbody").findall("tr"):
        th = tr.find("th")
        a = next((a for a in th.iter("a") if not has_class(a, "permalink")), None)
        out.append(text(a) if a is not None else (th.text or "").strip())
    return out


def header_texts(table: Element) -> list[str]:
    return [text(th) for th in table.find("thead").iter("th")]


def local(url: str) -> str | None:
    """The site-relative file a URL points at, or None for external/fragment-only URLs."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    return unquote(parts.path)


# -- views -----------------------------------------------------------------------------------
def test_every_view_is_written(site):
    root, _, written = site
    assert [p.relative_to(root).as_posix() for p in written] == PAGES + OTHER_FILES
    for name in PAGES + OTHER_FILES:
        assert (root / name).is_file(), name
    assert (root / ".nojekyll").read_bytes() == b""
    assert not list(root.rglob("*.tmp")), "temporary files left behind"


@pytest.mark.parametrize("page", PAGES)
def test_page_is_valid_html(site, page):
    root, _, _ = site
    html5lib.HTMLParser(strict=True).parse((root / page).read_bytes())  # raises on any parse error


@pytest.mark.parametrize("page", PAGES)
def test_every_image_and_local_link_resolves(site, page):
    root, _, _ = site
    tree = parse(root / page)
    imgs = list(tree.iter("img"))
    assert imgs or page in ("index.html", "techniques.html", "build.html")
    for img in imgs:
        target = local(img.get("src", ""))
        assert target is not None, img.get("src")
        assert (root / target).is_file(), target
        assert img.get("alt"), f"img without alt: {target}"
    for el in tree.iter():
        url = el.get("href")
        if url is None or not (target := local(url)):
            continue
        assert (root / target).is_file(), f"{page}: {url}"


@pytest.mark.parametrize("page", PAGES)
def test_no_external_resources(site, page):
    root, _, _ = site
    tree = parse(root / page)
    assert [s.get("src") for s in tree.iter("script")] == ["gallery.js"]  # shipped with the site
    for el in tree.iter():
        for attr in ("src", "srcset"):
            if el.get(attr) is not None:
                assert local(el.get(attr)), f"{page}: external {el.tag} {attr}={el.get(attr)}"
        if el.tag == "link":
            assert local(el.get("href", "")), f"{page}: external link {el.get('href')}"
        if el.tag == "a" and el.get("href"):
            assert urlsplit(el.get("href")).scheme in ("", "http", "https"), el.get("href")
    css = (root / "style.css").read_text()
    assert "url(" not in css and "@import" not in css
    head = tree.find("head")
    icons = [ln for ln in head.iter("link") if ln.get("rel") == "icon"]
    assert [i.get("href") for i in icons] == ["favicon.svg"]


def test_model_page_rows_and_columns(site):
    root, gallery, _ = site
    names = [name for _, name, _ in IMAGES]
    for mid, _, _ in MODELS:
        tables = grids(parse(root / f"model-{mid}.html"))
        assert len(tables) == 2
        attribution, synthesis = tables
        assert row_labels(attribution) == EXPECTED_ROWS
        assert row_labels(synthesis) == EXPECTED_SYNTHESIS_ROWS
        for table in tables:
            for row in expand(table):
                assert len(row) == 1 + len(IMAGES)
                assert row[0].tag == "th" and row[0].get("scope") == "row"
            heads = list(table.find("thead").iter("th"))
            assert all(th.get("scope") == "col" for th in heads)
            assert [text(th.find("a")) for th in heads[1:]] == names
    heads = header_texts(grids(parse(root / "model-alexnet.html"))[0])
    assert heads[1] == "Chelsea the cat.png Target class: Egyptian cat (285)"
    assert heads[2] == f"{HOSTILE} Target class: king snake (56)"
    # Targets differ per model: the other model's column names its own class.
    heads = header_texts(grids(parse(root / "model-resnet18.html"))[0])
    assert heads[1] == "Chelsea the cat.png Target class: tabby <cat> | [x] (281)"
    # Synthesis cells have no target: no "Target class" in their headers.
    assert "Target class" not in " ".join(header_texts(grids(parse(root / "model-alexnet.html"))[1]))
    # The layer a technique used is named under its row label.
    assert "gradcam · layer features.10" in text(parse(root / "model-alexnet.html").find(".//tbody/tr[4]/th"))


def test_failed_cell_shows_its_escaped_message(site):
    root, _, _ = site
    mid, iid, tid = FAILED
    page = root / f"model-{mid}.html"
    raw = page.read_text()
    assert "<b>features" not in raw and "&lt;b&gt;features|3&lt;/b&gt;" in raw
    failed = [td for td in parse(page).iter("td") if has_class(td, "failed")]
    assert len(failed) == 1
    assert failed[0].get("rowspan") == str(len(TECHNIQUES[tid][3]))
    assert "RuntimeError: layer <b>features|3</b> has no 4-D output" in text(failed[0])
    # The same cell on the comparison and technique pages, and listed on the index.
    for other in (f"compare-{iid}.html", f"technique-{tid}.html", "index.html"):
        assert "RuntimeError: layer &lt;b&gt;features|3&lt;/b&gt;" in (root / other).read_text(), other


def test_compare_page_has_models_as_columns(site):
    root, _, _ = site
    tree = parse(root / "compare-cat.html")
    attribution, synthesis = grids(tree)
    assert row_labels(attribution) == EXPECTED_ROWS[1:]
    assert row_labels(synthesis) == EXPECTED_SYNTHESIS_ROWS[1:]
    heads = header_texts(attribution)
    assert heads == ["Technique", "AlexNet Target class: Egyptian cat (285)",
                     "ResNet-18 | [tiny] Target class: tabby <cat> | [x] (281)"]
    for row in expand(attribution):
        assert len(row) == 1 + len(MODELS)
    # The failed cell sits in the ResNet column of the hostile image's page.
    evil = grids(parse(root / "compare-evil.html"))[0]
    gradcam_rows = [r for r in expand(evil) if text(r[0]).startswith("Grad-CAM")]
    assert len(gradcam_rows) == 3 and all(has_class(r[2], "failed") for r in gradcam_rows)


def test_compare_index_names_each_models_top1_and_flags_disagreement(site):
    root, _, _ = site
    cards = [li for ul in parse(root / "compare.html").iter("ul") if has_class(ul, "images") for li in ul.findall("li")]
    assert len(cards) == len(IMAGES)
    cat, evil = cards
    assert [text(d) for d in cat.iter("dt")] == ["AlexNet", "ResNet-18 | [tiny]"]
    assert [text(d) for d in cat.iter("dd")] == ["Egyptian cat (285) 60.0%", "tabby <cat> | [x] (281) 60.0%"]
    assert [text(p) for p in cat.iter("p") if has_class(p, "disagree")] == ["The models disagree on this image's class."]
    assert [text(d) for d in evil.iter("dd")] == ["king snake (56) 60.0%"] * 2
    assert not [p for p in evil.iter("p") if has_class(p, "disagree")]


def test_compare_index_puts_the_rankings_side_by_side(tmp_path):
    gallery = make_gallery(tmp_path)
    resnet = Ranking("resnet18", [
        {"technique": "gradcam", "insertion_auc": 0.6, "deletion_auc": 0.1, "score": 0.5, "baseline": False},
        {"technique": "vanilla", "insertion_auc": 0.3, "deletion_auc": 0.1, "score": 0.2, "baseline": False},
    ], "steps=16, substrate=zeros, softmax")
    render_site(replace(gallery, rankings=gallery.rankings + [resnet]), tmp_path)
    table = next(t for t in parse(tmp_path / "compare.html").iter("table") if has_class(t, "comparison"))
    assert header_texts(table) == ["Technique", "AlexNet", "ResNet-18 | [tiny]"]
    rows = table.find("tbody").findall("tr")
    # the first model's order, then what only a later one ranks; "—" where a model has no score
    assert [[text(c) for c in r] for r in rows] == [["Grad-CAM", "0.375 (#1)", "0.500 (#1)"],
                                                    ["random (baseline)", "-0.100 (#2)", "—"],
                                                    ["Vanilla Backpropagation", "—", "0.200 (#2)"]]
    assert [[text(b) for b in r.iter("b")] for r in rows] == [["0.500 (#1)"], [], []]  # a row's higher score
    assert [has_class(r, "baseline") for r in rows] == [False, True, False]
    assert rows[0].find(".//a").get("href") == "technique-gradcam.html"
    md = (tmp_path / "gallery.md").read_text()  # the same table for a README or model card
    assert "| Grad-CAM | 0.375 (\\#1) | **0.500 (\\#1)** |" in md
    assert "| *random* | -0.100 (\\#2) | — |" in md


def test_compare_pages_set_models_of_one_task_side_by_side(tmp_path):
    """A classifier and a segmenter are compared in tables of their own (their maps explain
    different targets), each table's row ids unique on the page."""
    gallery = make_gallery(tmp_path)
    models = [gallery.models[0], replace(gallery.models[1], task="segmentation")]
    render_site(replace(gallery, models=models), tmp_path)
    tree = parse(tmp_path / "compare-cat.html")
    heads = [header_texts(g) for g in grids(tree)]
    assert [len(h) for h in heads] == [2, 2, 2, 2]  # attribution and synthesis, per task: one model each
    assert heads[0][1].startswith("AlexNet") and heads[2][1].startswith("ResNet-18")
    titles = [text(h) for h in tree.iter("h2")]
    assert any(t.endswith("classification models") for t in titles) and any(t.endswith("segmentation models")
                                                                             for t in titles)
    ids = [el.get("id") for el in tree.iter() if el.get("id")]
    assert len(ids) == len(set(ids))


def test_rankings_are_compared_only_when_two_models_have_one(site):
    root, gallery, _ = site
    assert [r.model_id for r in gallery.rankings] == ["alexnet"]  # its own page's ranking says it all
    assert 'id="faithfulness"' not in (root / "compare.html").read_text()
    assert "Faithfulness side by side" not in (root / "gallery.md").read_text()


def test_technique_page_has_description_grid_and_curves(site):
    root, _, _ = site
    page = root / "technique-filter-visualization.html"
    raw = page.read_text()
    tree = parse(page)
    prose = next(d for d in tree.iter("div") if has_class(d, "prose"))
    assert prose.find(".//em") is not None  # Markdown rendered
    assert "<script>alert(3)" not in raw and "&lt;script&gt;alert(3)&lt;/script&gt;" in raw
    assert "javascript:" not in raw
    lead = next(p for p in tree.iter("p") if has_class(p, "lead"))
    links = [a.get("href") for a in lead.iter("a")]
    assert links == ["https://arxiv.org/abs/0000.00000", "https://doi.org/10.1/x"]  # each citation its link
    assert "Someone et al. 2020" in "".join(lead.itertext()) and ", ;" not in "".join(lead.itertext())
    tables = grids(tree)
    assert len(tables) == len(MODELS)
    for table in tables:
        assert row_labels(table) == EXPECTED_SYNTHESIS_ROWS
    svg = "{http://www.w3.org/2000/svg}"
    sparks = [s for s in tree.iter(f"{svg}svg") if has_class(s, "spark")]
    assert len(sparks) == len(MODELS) * len(IMAGES)
    assert sparks[0].find(f"{svg}polyline").get("points") == "1.0,29.0 30.5,23.1 89.5,8.4 119.0,1.0"
    plots = [a for a in tree.iter("a") if has_class(a, "plot")]
    assert len(plots) == len(MODELS) * len(IMAGES)
    gradcam = parse(root / "technique-gradcam.html")
    assert [row_labels(t) for t in grids(gradcam)] == [["Original Image"] + EXPECTED_ROWS[3:6]] * 2


def test_index_links_every_view_and_lists_predictions(site):
    root, _, _ = site
    tree = parse(root / "index.html")
    hrefs = {a.get("href") for a in tree.iter("a")}
    assert {"model-alexnet.html", "model-resnet18.html", "compare.html", "techniques.html", "build.html",
            "compare-cat.html", "compare-evil.html"} <= hrefs
    assert "gallery.md" not in hrefs  # raw Markdown is linked only where it renders (base_url)
    table = next(t for t in tree.iter("table") if has_class(t, "predictions"))
    assert header_texts(table) == ["Image", "AlexNet", "ResNet-18 | [tiny]"]
    rows = table.find("tbody").findall("tr")
    assert len(rows) == len(IMAGES)
    first = rows[0].findall("td")
    assert [len(td.findall(".//li")) for td in first] == [5, 5]
    assert text(first[0].find(".//li")) == "Egyptian cat (285) 60.0%"
    prose = next(d for d in tree.iter("div") if has_class(d, "prose"))
    assert prose.find("h2") is not None and prose.find("h1") is None  # headings moved below the title


def test_hostile_strings_are_escaped(site):
    root, _, _ = site
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;.png"
    for page in PAGES:
        raw = (root / page).read_text()
        assert "<script>" not in raw and "alert(1)</script>" not in raw, page
        assert "<em>small" not in raw, page
        assert escaped in raw or page in ("compare-cat.html", "techniques.html", "build.html"), page
        assert "Test &lt;Gallery&gt; | one" in raw, page
    md = (root / "gallery.md").read_text()
    assert not re.search(r"(?<!\\)<(script|/script|em)", md)
    assert r"\<script\>alert(1)\</script\>.png" in md
    assert r"ResNet-18 \| \[tiny\]" in md


def test_alt_text_names_technique_variant_model_image_and_class(site):
    root, gallery, _ = site
    tree = parse(root / "model-alexnet.html")
    alts = {unquote(img.get("src")): img.get("alt") for img in tree.iter("img")}
    alt = alts["thumbs/img/alexnet/evil/gradcam-overlay.png"]
    for part in ("Grad-CAM", "Heatmap on image", "AlexNet", HOSTILE, "king snake (56)"):
        assert part in alt
    assert alts["thumbs/img/input/Café au lait.png"] == f"Original image {HOSTILE}"


def test_metrics_flags_and_ranking(site):
    root, _, _ = site
    tree = parse(root / "model-alexnet.html")
    metric_lists = [ul for ul in tree.iter("ul") if has_class(ul, "metrics")]
    assert len(metric_lists) == len(IMAGES) * 3  # vanilla, gradcam, integrated gradients
    assert text(metric_lists[0]).startswith("Del 0.125 Ins 0.500 ρ 0.900")
    flagged = [li for li in tree.iter("li") if has_class(li, "flagged")]
    assert len(flagged) == len(IMAGES)  # alexnet's vanilla sanity 0.9 >= 0.5
    assert not [li for li in parse(root / "model-resnet18.html").iter("li") if has_class(li, "flagged")]
    ranking = next(t for t in tree.iter("table") if has_class(t, "ranking"))
    assert header_texts(ranking) == ["Rank", "Technique", "Insertion AUC", "Deletion AUC", "Score", "Baseline"]
    rows = ranking.find("tbody").findall("tr")
    assert [[text(c) for c in r] for r in rows] == [["1", "gradcam", "0.500", "0.125", "0.375", "no"],
                                                    ["2", "random", "0.200", "0.300", "-0.100", "yes"]]
    assert has_class(rows[1], "baseline")
    assert rows[0].find(".//a").get("href") == "technique-gradcam.html"
    assert "Protocol: steps=16, substrate=zeros, softmax" in text(tree)
    assert not [t for t in parse(root / "model-resnet18.html").iter("table") if has_class(t, "ranking")]


# -- gallery.md ------------------------------------------------------------------------------
_PIPE = re.compile(r"(?<!\\)\|")
_LINK = re.compile(r"\]\(([^)\s]*)\)|(?:href|src)=\"([^\"]*)\"")


def md_tables(md: str) -> list[list[str]]:
    tables, current = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def test_gallery_md_links_resolve(site):
    root, _, _ = site
    md = (root / "gallery.md").read_text()
    targets = [a or b for a, b in _LINK.findall(md)]
    assert len(targets) > 50
    for url in targets:
        assert url and " " not in url
        path = local(url)
        assert path is not None, url
        assert (root / path).is_file(), url
    assert "Caf%C3%A9%20au%20lait.png" in md
    assert "](http" not in md  # external references only as <autolinks>


def test_gallery_md_tables_mirror_the_model_pages(site):
    root, _, _ = site
    md = (root / "gallery.md").read_text()
    tables = md_tables(md)
    for table in tables:
        widths = {len(_PIPE.findall(line)) for line in table}
        assert len(widths) == 1, table[0]
        assert re.fullmatch(r"\|( --- \|)+", table[1])
    grid_tables = [t for t in tables if t[0].startswith("| Technique |") and "Registry name" not in t[0]
                   and not re.search("[↑↓]<br>", t[0])]  # not the techniques list, nor a metrics table
    assert len(grid_tables) == 2 * len(MODELS)

    def labels(table: list[str]) -> list[str]:
        return [re.sub(r"\\(.)", r"\1", re.search(r"\*\*(.+?)\*\*", line).group(1)) for line in table[2:]]

    assert labels(grid_tables[0]) == EXPECTED_ROWS
    assert labels(grid_tables[1]) == EXPECTED_SYNTHESIS_ROWS
    assert "Target class: Egyptian cat (285)" in grid_tables[0][0]
    failed = next(line for line in grid_tables[2] if "**Failed:**" in line)
    assert r"RuntimeError: layer \<b\>features\|3\</b\> has no 4-D output" in failed
    assert "ρ 0.900 ⚠" in grid_tables[0][3]
    assert all(re.search(r'<img [^>]*width="\d+"', line) for line in grid_tables[0][2:])  # GitHub sizes them


def test_gallery_md_links_html_pages_only_at_base_url(site, tmp_path):
    root, gallery, _ = site
    html_link = re.compile(r"\]\(([^)\s]*\.html[^)\s]*)\)")
    assert not html_link.findall((root / "gallery.md").read_text())  # GitHub would show them as source
    render_site(replace(gallery, base_url="https://me.github.io/repo/"), tmp_path)
    links = html_link.findall((tmp_path / "gallery.md").read_text())
    assert len(links) > 10 and all(u.startswith("https://me.github.io/repo/") for u in links)


# -- random weights --------------------------------------------------------------------------
RANDOM = "resnet18"  # the fixture's model built with random weights here; AlexNet stays trained


@pytest.fixture(scope="module")
def random_site(tmp_path_factory: pytest.TempPathFactory):
    """The fixture gallery with ResNet-18 built with random weights, and its filter
    visualization made once from no image (a row of the side-by-side table)."""
    root = tmp_path_factory.mktemp("random-site")
    gallery = make_gallery(root)
    synth = "filter_visualization"
    cells = [replace(c, image_id="") if (c.model_id, c.technique_id) == (RANDOM, synth) else c
             for c in gallery.cells if (c.model_id, c.image_id, c.technique_id) != (RANDOM, "evil", synth)]
    models = [replace(m, random_weights=m.id == RANDOM) for m in gallery.models]
    gallery = replace(gallery, models=models, cells=cells)
    render_site(gallery, root)
    return root, gallery


def marked(el: Element) -> bool:
    """Whether ``el`` holds the visible "random weights" mark."""
    return any(has_class(s, "random-weights") and text(s) == "random weights" for s in el.iter("span"))


def random_notes(tree: Element) -> list[str]:
    return [text(p) for p in tree.iter("p") if has_class(p, "random-note")]


def target_headers(table: Element) -> list[Element]:
    """The column headers that name the class their column's maps explain."""
    return [th for th in table.find("thead").iter("th") if any(has_class(s, "target") for s in th.iter("span"))]


def test_random_weights_note_names_the_untrained_models(random_site):
    trained, untrained = random_site[1].models
    assert random_weights_note([trained]) == ""
    one = random_weights_note([trained, untrained])
    assert one.startswith("ResNet-18 | [tiny] is untrained") and "AlexNet" not in one and "for it are not" in one
    both = random_weights_note([replace(trained, random_weights=True), untrained])
    assert both.startswith("AlexNet and ResNet-18 | [tiny] are untrained") and "for them are not" in both


def test_the_landing_page_marks_a_random_models_predictions_and_classes(random_site):
    root, _ = random_site
    tree = parse(root / "index.html")
    assert random_notes(tree) == ['Random weights: ResNet-18 | [tiny] is untrained (weights = "none"), so the '
                                  "classes shown for it are not predictions and its maps explain no learned features."]
    predictions = next(t for t in tree.iter("table") if has_class(t, "predictions"))
    assert [marked(th) for th in predictions.find("thead").iter("th")] == [False, False, True]
    for tr in predictions.find("tbody").findall("tr"):  # also in the cell: a phone may scroll the header away
        assert [marked(td) for td in tr.findall("td")] == [False, True]
    teasers = {text(d.find("h3")): grids(d)[0] for d in tree.iter("div") if has_class(d, "teaser")}
    assert set(teasers) == {"AlexNet", "ResNet-18 | [tiny]"}
    for name, table in teasers.items():
        heads = target_headers(table)
        assert len(heads) == len(IMAGES) and {marked(th) for th in heads} == {name != "AlexNet"}


def test_compare_pages_mark_the_random_models_column_and_top1(random_site):
    root, _ = random_site
    index = parse(root / "compare.html")
    assert len(random_notes(index)) == 1
    for dl in (d for d in index.iter("dl") if has_class(d, "tops")):
        pairs = list(zip(dl.findall("dt"), dl.findall("dd")))
        assert [(text(dt), marked(dd)) for dt, dd in pairs] == [("AlexNet", False), ("ResNet-18 | [tiny]", True)]
    for page in ("compare-cat.html", "compare-evil.html"):
        tree = parse(root / page)
        assert len(random_notes(tree)) == 1
        heads = [th for table in grids(tree) for th in target_headers(table)]
        assert [(text(th.find("a")), marked(th)) for th in heads] == [("AlexNet", False), ("ResNet-18 | [tiny]", True)]


def test_model_and_technique_pages_mark_the_random_model_only(random_site):
    root, _ = random_site
    tree = parse(root / "model-resnet18.html")
    assert len(random_notes(tree)) == 1
    tables = grids(tree)
    heads = [th for t in tables for th in target_headers(t)]
    assert heads and all(marked(th) for th in heads)
    beside = [t for t in tables if "made from no image" in text(t.find("caption"))]
    assert len(beside) == 1 and all(marked(tr.find("th")) for tr in beside[0].find("tbody").findall("tr"))
    alexnet = parse(root / "model-alexnet.html")
    assert not random_notes(alexnet) and not marked(alexnet)
    technique = parse(root / "technique-gradcam.html")
    assert [(text(h.find("a")), marked(h)) for h in technique.iter("h2") if h.find("a") is not None] == [
        ("AlexNet", False), ("ResNet-18 | [tiny]", True)]


def test_gallery_md_marks_the_random_model(random_site):
    root, gallery = random_site
    md = (root / "gallery.md").read_text()
    sections = md.split("\n## ")[1:]
    predictions = next(s for s in sections if s.startswith("Images and predictions"))
    assert "**Random weights:** ResNet-18 \\| \\[tiny\\] is untrained" in predictions
    assert r"| AlexNet top-5 | ResNet-18 \| \[tiny\] top-5 (**random weights**) |" in predictions
    rows = [_PIPE.split(line)[2:4] for line in predictions.splitlines() if line.startswith("| <a ")]
    assert len(rows) == len(IMAGES)
    assert all(not a.startswith(" (**random") and b.startswith(" (**random weights**)<br>1. ") for a, b in rows)
    alexnet = next(s for s in sections if s.startswith("AlexNet"))
    resnet = next(s for s in sections if s.startswith(r"ResNet-18 \| \[tiny\]"))
    assert "random weights" not in alexnet.lower()
    assert "**Random weights:**" in resnet
    heads = [cell for line in resnet.splitlines() if line.startswith("| Technique |")
             for cell in _PIPE.split(line) if "Target class" in cell]
    assert heads and all(cell.endswith("(**random weights**) ") for cell in heads)
    assert r"| **ResNet-18 \| \[tiny\]** (**random weights**) |" in resnet  # the side-by-side row
    embedded = render.markdown_tables(gallery)  # README sections: each image with both models
    columns = [cell for line in embedded.splitlines() if line.startswith("| Technique |")
               for cell in _PIPE.split(line) if "Target class" in cell]
    assert len(columns) == len(IMAGES) * len(MODELS)  # the attribution grid; synthesis names no class
    assert [("ResNet" in c, "(**random weights**)" in c) for c in columns] == [(False, False), (True, True)] * 2


def test_trained_models_carry_no_random_weights_mark(site):
    root, gallery, _ = site
    assert not any(m.random_weights for m in gallery.models)
    for page in PAGES:
        tree = parse(root / page)
        assert not marked(tree) and not random_notes(tree), page
    assert "random weights" not in (root / "gallery.md").read_text().lower()


# -- determinism and safety ------------------------------------------------------------------
def test_two_renders_are_byte_identical(site, tmp_path):
    root, gallery, written = site
    other = tmp_path / "again"
    again = render_site(make_gallery(other), other)
    assert [p.relative_to(other) for p in again] == [p.relative_to(root) for p in written]
    for a, b in zip(written, again):
        assert a.read_bytes() == b.read_bytes(), a.name
    # Rendering over an existing site gives the same files and leaves no temporary files.
    render_site(gallery, other)
    for a, b in zip(written, again):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert sorted(p.name for p in other.iterdir() if p.is_file()) == sorted(OTHER_FILES + PAGES)


def test_record_path_leaving_the_site_is_refused(tmp_path):
    gallery = make_gallery(tmp_path)
    cell = gallery.cells[0]
    bad = replace(cell, variants=[replace(cell.variants[0], thumb="../../etc/passwd")])
    with pytest.raises(ValueError, match="'..'"):
        render_site(replace(gallery, cells=[bad] + gallery.cells[1:]), tmp_path / "out")


def test_render_imports_no_compute_libraries():
    tree = ast.parse(Path(render.__file__).read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m.split(".")[0] for m in modules} & {"torch", "numpy", "PIL", "torchvision"}


# -- helpers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path, url", [
    ("img/a b.png", "img/a%20b.png"),
    ("img/Café.png", "img/Caf%C3%A9.png"),
    ("img/<x>|[y]#(z)?.png", "img/%3Cx%3E%7C%5By%5D%23%28z%29%3F.png"),
    ("javascript:alert(1)", "javascript%3Aalert%281%29"),
])
def test_site_url_encodes(path, url):
    assert site_url(path) == url


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x.png", "img/../../x.png", "img//x.png", "a\0b"])
def test_site_url_refuses_paths_that_leave_the_site(path):
    with pytest.raises(ValueError):
        site_url(path)


def test_md_escape():
    assert md_escape("a|b [c] <d> *e* _f_ `g`\nh f(x)!") == r"a\|b \[c\] \<d\> \*e\* \_f\_ \`g\` h f(x)!"


@pytest.mark.parametrize("key, label, expected", [
    ("color", "Colored gradient", "Colored Vanilla Backpropagation"),
    ("saliency", "Saliency", "Vanilla Backpropagation Saliency"),
    ("positive", "Positive saliency", "Vanilla Backpropagation Positive Saliency"),
    ("overlay", "Heatmap on image", "Vanilla Backpropagation Heatmap on Image"),
    ("x", "Negative {title}", "Negative Vanilla Backpropagation"),
    ("image", "Image", "Vanilla Backpropagation"),
])
def test_row_label(key, label, expected):
    assert row_label("Vanilla Backpropagation", Variant(key, label, "a.png", "a.png", "")) == expected


def test_sparkline_ignores_non_finite_values():
    assert sparkline([]) is None
    assert sparkline([1.0, float("inf")]) is None
    line = sparkline([2.0, 2.0, 2.0], width=10, height=10)
    assert line is not None and line.points == "1.0,9.0 5.0,9.0 9.0,9.0" and line.steps == 3


def test_a_registry_group_gets_its_own_table(tmp_path):
    gallery = make_gallery(tmp_path)
    first = replace(gallery.techniques[0], group="perturbation")
    site = render.SiteModel(replace(gallery, techniques=[first, *gallery.techniques[1:]]))
    assert ("perturbation", [first]) in site.families()
    assert all(first not in techs for group, techs in site.families() if group != "perturbation")
    assert render.FAMILY_TITLES["perturbation"] == "Perturbation and Shapley"


def test_technique_description_prefers_the_markdown_file():
    folder = resources.files("galleryvis.templates").joinpath("techniques")
    for name in ["vanilla", "gradcam", "no_such_technique", "../base.html"]:
        record = TechniqueRecord(name, name, name, "attribution", {}, "fallback *text*", "")
        file = folder.joinpath(f"{name}.md")
        expected = file.read_text(encoding="utf-8") if name.isidentifier() and file.is_file() else "fallback *text*"
        assert render.technique_description(record) == expected
