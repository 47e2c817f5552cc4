"""The metrics table of every model: each technique's metrics averaged over the images (as the
cells in gallery.json hold them), ranked per column by its direction, the best in bold; the same
tables side by side on the compare page and in gallery.md."""
from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from galleryvis.build.sitewriter import metric_tables
from galleryvis.render.records import Cell, Gallery, MetricAgreement, ModelRecord, TechniqueRecord

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"

MANIFEST = """
[[images]]
path = "cat.png"
box = [120, 20, 360, 280]

[[images]]
path = "coffee.png"

[[models]]
name = "resnet18"
weights = "none"
size = 48

[[models]]
name = "mobilenet_v3_small"
weights = "none"
size = 48

[[techniques]]
name = "vanilla"

[[techniques]]
name = "gradcam"

[metrics]
enabled = true
steps = 4
sanity_steps = 1
sanity_techniques = ["vanilla"]
compute = ["sparseness", "pointing_game"]
"""
LOWER = {"deletion_auc", "sanity", "road_morf"}  # the rest of these columns: higher is better


def _ranks(values: dict[str, float], higher: bool) -> dict[str, int]:
    """Competition ranks, written out: 1 + how many values are strictly better."""
    return {t: 1 + sum((o > v) if higher else (o < v) for o in values.values()) for t, v in values.items()}


class _Table(HTMLParser):
    """The first ``table.metrics`` of a page: its body rows as [(row header, [(cell text, bold)])]."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.id, self.inside, self.rows, self.cell = table_id, False, [], None
        self.bold = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == self.id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append(["", []])
        elif self.inside and tag in ("th", "td") and self.rows:
            self.cell, self.bold = [], False
        elif self.inside and tag == "b":
            self.bold = True

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("th", "td") and self.cell is not None and self.rows:
            text = " ".join("".join(self.cell).split())
            if tag == "th":
                self.rows[-1][0] = text
            else:
                self.rows[-1][1].append((text, self.bold))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _html_rows(page: Path, table_id: str) -> dict[str, list[tuple[str, bool]]]:
    parser = _Table(table_id)
    parser.feed(page.read_text(encoding="utf-8"))
    return {head: cells for head, cells in parser.rows if cells}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from galleryvis.build.pipeline import Options, build
    from galleryvis.config.manifest import load_manifest

    root = tmp_path_factory.mktemp("mtable")
    for name in ("cat.png", "coffee.png"):
        shutil.copy(PHOTOS / name, root / name)
    (root / "galleryvis.toml").write_text(MANIFEST, encoding="utf-8")
    assert build(load_manifest(root / "galleryvis.toml"), Options(quiet=True, batch_size=4)).failed == 0
    return root / "site"


@pytest.mark.slow
def test_the_tables_hold_the_means_of_the_cells_ranked_by_direction(built: Path) -> None:
    """gallery.json's tables, value by value from its cells: each mean over the cells that have
    the metric (pointing game: the one image with a box), the count of those cells, the ranks
    (means equal to the 4 decimals shown share the better one) and the best of each column;
    sanity only where it ran."""
    data = json.loads((built / "gallery.json").read_text(encoding="utf-8"))
    tables = {t["model_id"]: t for t in data["metric_tables"]}
    assert list(tables) == ["resnet18", "mobilenet_v3_small"]
    for model_id, table in tables.items():
        keys = [c["key"] for c in table["columns"]]
        assert keys == ["deletion_auc", "insertion_auc", "sparseness", "sanity", "pointing_game"]
        assert [c["category"] for c in table["columns"]] == ["faithfulness", "faithfulness", "complexity",
                                                             "randomisation", "localisation"]
        assert table["images"] == 2
        for key in keys:
            cells: dict[str, list[float]] = {}
            for c in data["cells"]:
                if c["model_id"] == model_id and key in c["metrics"]:
                    cells.setdefault(c["technique_id"], []).append(c["metrics"][key])
            got = {t: row[key] for t, row in table["rows"].items() if key in row}
            assert set(got) == set(cells) == ({"vanilla"} if key == "sanity" else
                                              {"vanilla", "gradcam"})
            means = {t: float(np.mean(v)) for t, v in cells.items()}
            for t, v in got.items():
                assert v["mean"] == pytest.approx(means[t], abs=1e-6)
                assert v["images"] == (1 if key == "pointing_game" else 2)
            ranks = _ranks({t: round(v["mean"], 4) for t, v in got.items()}, key not in LOWER)  # as shown
            assert {t: v["rank"] for t, v in got.items()} == ranks
            assert {t for t, v in got.items() if v["best"]} == ({t for t, r in ranks.items() if r == 1}
                                                                if len(got) > 1 else set())


@pytest.mark.slow
def test_pages_show_the_tables_with_bold_ranks_dashes_and_arrows(built: Path) -> None:
    """The model page, the compare page and gallery.md draw gallery.json's numbers: the mean to 4
    decimals, its rank, bold where it is the best, a dash where the technique lacks the metric, the
    image count where it covers fewer images, and each column's direction and hint."""
    data = json.loads((built / "gallery.json").read_text(encoding="utf-8"))
    table = data["metric_tables"][0]
    keys = [c["key"] for c in table["columns"]]
    landing = (built / "index.html").read_text(encoding="utf-8")  # the meta-evaluation, per model and category
    assert table["agreement"]
    for a in table["agreement"]:
        assert f"<b>{a['category']}</b>: τ = {a['tau']:.2f}, the metrics" in landing
    titles = {t["id"]: t["title"] for t in data["techniques"]}
    rows = _html_rows(built / "model-resnet18.html", "metrics-table")
    assert list(rows) == [titles[t] for t in table["rows"]]
    for tech_id, values in table["rows"].items():
        for key, (text, bold) in zip(keys, rows[titles[tech_id]]):
            v = values.get(key)
            if v is None:
                assert (text, bold) == ("—", False)
                continue
            note = " 1 of 2 images" if key == "pointing_game" else ""
            assert text == f"{v['mean']:.4f} #{v['rank']}{note}"
            assert bold == v["best"]
    page = (built / "model-resnet18.html").read_text(encoding="utf-8")
    assert re.search(r"Deletion AUC <span class=\"better\"[^>]*>↓</span>", page)
    assert re.search(r"Sparseness <span class=\"better\"[^>]*>↑</span>", page)
    assert "Sparseness: is the map concentrated on few features? (Gini index); higher is better" in page

    # compare.html: one column per model under each metric, each model's own ranks
    both = _html_rows(built / "compare.html", "metrics-classification")
    tables = data["metric_tables"]
    for tech_id in table["rows"]:
        cells = iter(both[titles[tech_id]])
        for key in keys:
            for t in tables:
                text, bold = next(cells)
                v = t["rows"][tech_id].get(key)
                assert text.split(" ")[0] == ("—" if v is None else f"{v['mean']:.4f}")
                assert bold == bool(v and v["best"])

    md = (built / "gallery.md").read_text(encoding="utf-8")
    lines = md[md.index("### Metrics"):].splitlines()
    header = next(line for line in lines if line.startswith("| Technique |"))
    assert "Deletion AUC ↓<br>faithfulness" in header and "Pointing Game ↑<br>localisation" in header
    body = lines[lines.index(header) + 2:lines.index(header) + 2 + len(table["rows"])]
    for line, (tech_id, values) in zip(body, table["rows"].items()):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == titles[tech_id]
        for key, cell in zip(keys, cells[1:]):
            v = values.get(key)
            if v is None:
                assert cell == "—"
            else:
                mean = f"**{v['mean']:.4f}**" if v["best"] else f"{v['mean']:.4f}"
                note = "; 1 of 2 images" if key == "pointing_game" else ""
                assert cell == f"{mean} (#{v['rank']}{note})"


def _cell(model: str, image: str, tech: str, **metrics: float) -> Cell:
    return Cell(model, image, tech, 1, "one", "ok", metrics=metrics)


def _tech(tid: str) -> TechniqueRecord:
    return TechniqueRecord(tid, tid, tid.title(), "attribution", {}, "", "")


def test_ties_share_the_better_rank_and_every_tied_best_is_bold() -> None:
    """Competition ranks (1, 1, 3) by each column's direction, means equal to the 4 decimals shown
    tied; every technique tied for the best is bold; a column with one value has a rank but no bold; a metric no cell has is no column, a
    technique without one is a dash (absent), failed cells and scores outside a category (a
    transfer rank) are left out; a model without any gets no table."""
    cells = [
        _cell("m", "a", "x", deletion_auc=0.2, insertion_auc=0.5, sparseness=0.3),
        _cell("m", "b", "x", deletion_auc=0.4, insertion_auc=0.7, sparseness=0.5),
        _cell("m", "a", "y", deletion_auc=0.3, insertion_auc=0.6, **{"rank under n": 3.0}),
        _cell("m", "b", "y", deletion_auc=0.3, insertion_auc=0.6),
        _cell("m", "a", "z", deletion_auc=0.5, insertion_auc=0.9, sanity=0.25, sparseness=0.40001),
        _cell("m", "b", "z", deletion_auc=0.9, insertion_auc=0.1),
        Cell("m", "c", "z", 1, "one", "failed", metrics={"deletion_auc": 0.0}),
        _cell("n", "a", "x", **{"rank under m": 1.0}),
    ]
    (table,) = metric_tables(cells, [_tech(t) for t in "xyz"], 3, ["m", "n"])
    assert [(c.key, c.category, c.better) for c in table.columns] == [
        ("deletion_auc", "faithfulness", "lower"), ("insertion_auc", "faithfulness", "higher"),
        ("sparseness", "complexity", "higher"), ("sanity", "randomisation", "lower")]
    rows = table.rows
    assert {t: (v["deletion_auc"].mean, v["deletion_auc"].rank, v["deletion_auc"].best) for t, v in rows.items()} \
        == {"x": (0.3, 1, True), "y": (0.3, 1, True), "z": (0.7, 3, False)}
    assert {t: (v["insertion_auc"].mean, v["insertion_auc"].rank) for t, v in rows.items()} \
        == {"x": (0.6, 1), "y": (0.6, 1), "z": (0.5, 3)}
    assert (rows["z"]["sanity"].rank, rows["z"]["sanity"].best, rows["z"]["sanity"].images) == (1, False, 1)
    assert "sanity" not in rows["x"] and "sparseness" not in rows["y"]
    assert rows["x"]["sparseness"].mean == pytest.approx(0.4) and rows["z"]["deletion_auc"].images == 2
    # 0.4 and 0.40001 both show as 0.4000: tied, though the record keeps the difference
    assert [(rows[t]["sparseness"].mean, rows[t]["sparseness"].rank, rows[t]["sparseness"].best) for t in "xz"] \
        == [(0.4, 1, True), (0.40001, 1, True)]

    # the meta-evaluation: faithfulness's two metrics rank x, y, z alike (Kendall's tau-b, scipy's); one metric alone is none
    from scipy.stats import kendalltau

    expected = kendalltau([-0.3, -0.3, -0.7], [0.6, 0.6, 0.5]).statistic  # deletion turned: lower is better
    assert table.agreement == [MetricAgreement("faithfulness", ["deletion_auc", "insertion_auc"],
                                               pytest.approx(expected), 3)]

    from galleryvis.render.grid import SiteModel

    gallery = Gallery("t", "", [], [ModelRecord("m", "M", "", {}, {})], [_tech(t) for t in "xyz"], cells,
                      metric_tables=[table])
    back = Gallery.from_dict(json.loads(gallery.to_json()))  # as gallery.json carries it
    assert back.metric_tables == [table]
    assert SiteModel(back).agreements() == [(back.models[0], [
        ("faithfulness", "1.00", "agree", "Deletion AUC, Insertion AUC; 3 techniques")])]
    view = SiteModel(back).model_metrics(back.models[0])
    assert [(h.title, h.arrow) for h in view.headers] == [("Deletion AUC", "↓"), ("Insertion AUC", "↑"),
                                                          ("Sparseness", "↑"), ("Sanity ρ", "↓")]
    assert view.groups == [("faithfulness", 2), ("complexity", 1), ("randomisation", 1)]
    x = view.rows[0][2]
    assert [(e.text, e.rank, e.of, e.best, e.note) if e else None for e in x] == [
        ("0.3000", 1, 3, True, "2 of 3 images"), ("0.6000", 1, 3, True, "2 of 3 images"),
        ("0.4000", 1, 2, True, "2 of 3 images"), None]
    assert [e.note for e in view.rows[2][2][2:]] == ["1 of 3 images", "1 of 3 images"]  # z: sparseness, sanity
