"""Builds: incremental through the cache, never half-written, failures isolated."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import pytest
from click.testing import CliRunner

from galleryvis import registry
from galleryvis.cli import main
from galleryvis.config.manifest import load_manifest
from galleryvis.build.pipeline import Options, build

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"

MANIFEST = """
[gallery]
title = "test gallery"

[[images]]
path = "cat.png"

[[images]]
path = "coffee.png"
target = "espresso"

[[models]]
name = "mobilenet_v3_small"
weights = "none"
size = 64

[[models]]
name = "resnet18"
weights = "none"
size = 64

[[techniques]]
name = "vanilla"

[[techniques]]
name = "gradcam"

[[techniques]]
name = "guided_backprop"

[[techniques]]
name = "integrated_gradients"
params = { steps = 4 }
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("cat.png", "coffee.png"):
        shutil.copy(PHOTOS / name, tmp_path / name)
    (tmp_path / "galleryvis.toml").write_text(MANIFEST)
    return tmp_path


def _build(project: Path, **kw):
    return build(load_manifest(project / "galleryvis.toml"), Options(quiet=True, **kw))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_unchanged_rebuild_computes_nothing_and_is_byte_identical(project):
    first = _build(project)
    assert (first.computed, first.cached, first.failed) == (16, 0, 0)
    pages = {k: v for k, v in _snapshot(project / "site").items() if not k.endswith("build.json")}
    second = _build(project)
    assert (second.computed, second.cached) == (0, 16)
    again = {k: v for k, v in _snapshot(project / "site").items() if not k.endswith("build.json")}
    assert again == pages
    assert any(k.endswith(".html") for k in pages) and "gallery.md" in pages


def test_param_change_recomputes_only_that_technique(project):
    _build(project)
    toml = (project / "galleryvis.toml").read_text().replace("steps = 4", "steps = 5")
    (project / "galleryvis.toml").write_text(toml)
    summary = _build(project)
    assert (summary.computed, summary.cached) == (4, 12)
    assert set(summary.seconds) == {"integrated_gradients"}


def test_a_new_technique_version_recomputes_only_that_techniques_cells(project, monkeypatch):
    import dataclasses

    _build(project)
    gradcam = registry.get("gradcam")
    monkeypatch.setitem(registry._REGISTRY, "gradcam", dataclasses.replace(gradcam, version=gradcam.version + 1))
    summary = _build(project)
    assert (summary.computed, summary.cached) == (4, 12)
    assert set(summary.seconds) == {"gradcam"}


def test_new_image_computes_only_its_cells(project):
    _build(project)
    shutil.copy(PHOTOS / "rocket.jpg", project / "rocket.jpg")
    (project / "galleryvis.toml").write_text(MANIFEST + '\n[[images]]\npath = "rocket.jpg"\n')
    summary = _build(project)
    assert (summary.computed, summary.cached) == (8, 16)


def test_corrupt_cache_entry_is_reported_and_recomputed(project, capsys):
    _build(project)
    maps = [p for p in sorted((project / ".galleryvis-cache").glob("??/*.json")) if '"technique"' in p.read_text()]
    victim = maps[3].with_suffix(".npy")
    victim.write_bytes(victim.read_bytes()[:40])
    summary = _build(project)
    assert summary.computed == 1
    assert "corrupt" in capsys.readouterr().err
    assert np.load(victim).ndim >= 1


def test_dry_run_computes_nothing(project):
    summary = _build(project, dry_run=True)
    assert summary.computed == 0 and not (project / "site").exists()
    assert "mobilenet_v3_small / vanilla: 2 to compute, 0 cached" in summary.plan


def _dry_run(*args: str) -> list[str]:
    result = CliRunner().invoke(main, ["build", "--dry-run", *args])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_dry_run_ends_with_the_cells_and_the_model_passes_to_expect(project, monkeypatch):
    monkeypatch.chdir(project)
    # 2 models x 2 images x (vanilla, gradcam, guided backprop: 1 pass each; IG: its 4 steps)
    assert _dry_run()[-1] == ("total: 16 cells to compute, 0 cached; about 28 model passes "
                                     "(images through the models) to compute them, before scoring")
    _build(project)
    (project / "galleryvis.toml").write_text(MANIFEST.replace("steps = 4", "steps = 6"))
    assert _dry_run()[-1].startswith("total: 4 cells to compute, 12 cached; about 24 model passes ")


def test_dry_run_says_when_it_plans_the_embedded_default(tmp_path, monkeypatch):
    from galleryvis.config.manifest import default_manifest

    monkeypatch.chdir(tmp_path)
    lines = _dry_run()
    assert lines[-1].startswith("manifest: the embedded default gallery")
    m = default_manifest()
    cells = sum(int(re.search(r": (\d+) to compute", line).group(1)) for line in lines[:-2])
    assert lines[-2].startswith(f"total: {cells} cells to compute, 0 cached; about ")
    assert cells >= len(m.models) * len(m.images) * len(m.techniques) // 2
    assert not (tmp_path / "site").exists()


def test_failing_cell_is_isolated_and_shown(project, monkeypatch):
    real = registry.get("vanilla")

    def explode(ctx):
        if 967 in ctx.target.index:  # the coffee photo's target, espresso
            raise RuntimeError("injected failure")
        return real.fn(ctx)

    monkeypatch.setitem(registry._REGISTRY, "vanilla", registry.Technique(**{**real.__dict__, "fn": explode}))
    result = CliRunner().invoke(main, ["build", str(project / "galleryvis.toml"), "-q"])
    assert result.exit_code == 1
    assert "injected failure" in result.output
    summary_pages = (project / "site" / "gallery.md").read_text()
    assert "injected failure" in summary_pages
    failed = _build(project)
    assert failed.failed == 2 and failed.cached == 14  # coffee's vanilla cell, per model


def test_fail_fast_stops_at_first_failure(project, monkeypatch):
    def explode(ctx, **_):
        raise RuntimeError("boom")

    real = registry.get("gradcam")
    monkeypatch.setitem(registry._REGISTRY, "gradcam", registry.Technique(**{**real.__dict__, "fn": explode}))
    with pytest.raises(RuntimeError, match="boom"):
        _build(project, fail_fast=True)
    assert not (project / "site").exists()


def test_build_killed_midway_leaves_previous_site_intact(project):
    _build(project)
    before = _snapshot(project / "site")
    slow = MANIFEST.replace('name = "vanilla"', 'name = "smoothgrad"\nparams = { samples = 100 }')
    (project / "galleryvis.toml").write_text(slow)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "galleryvis", "build", "galleryvis.toml", "--batch-size", "1"],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    entries = len(list((project / ".galleryvis-cache").glob("??/*.json")))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list((project / ".galleryvis-cache").glob("??/*.json"))) == entries:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _snapshot(project / "site") == before
    summary = _build(project)
    assert summary.failed == 0 and summary.cached + summary.computed == 16 and summary.cached >= 12
    assert not list(project.glob(".site.*"))


def test_second_concurrent_build_is_refused_clearly(project):
    from galleryvis.storage.sitefiles import build_lock

    with build_lock(project / ".galleryvis-cache"):
        result = CliRunner().invoke(main, ["build", str(project / "galleryvis.toml"), "-q"])
    assert result.exit_code == 2 and "another galleryvis build" in result.output


def test_scores_are_shown_ranked_and_cached(project, monkeypatch):
    toml = MANIFEST + "\n[metrics]\nenabled = true\nsteps = 4\nsanity_steps = 1\nsanity_techniques = [\"vanilla\"]\n"
    (project / "galleryvis.toml").write_text(toml)
    _build(project)
    md = (project / "site" / "gallery.md").read_text()
    assert "Deletion AUC" in md and "Insertion AUC" in md and "Sanity" in md
    assert "random map" in md and "centre Gaussian" in md
    entries = sorted((project / ".galleryvis-cache").glob("??/*.json"))

    from galleryvis import metrics

    def no_recompute(*_a, **_k):
        raise AssertionError("scores must come from the cache")

    monkeypatch.setattr(metrics, "deletion_insertion", no_recompute)
    monkeypatch.setattr(metrics, "sanity_many", no_recompute)
    summary = _build(project)
    assert summary.computed == 0 and summary.failed == 0
    assert sorted((project / ".galleryvis-cache").glob("??/*.json")) == entries
    assert (project / "site" / "gallery.md").read_text() == md


def test_shared_scoring_gives_each_technique_the_scores_it_gets_alone(project):
    """Deletion / insertion scores every map of an image in one call and the sanity check runs
    one cascade per model for all its techniques; each cell's scores are those of a call of its
    own (as galleryvis scored before it shared these passes), to 1e-3 (the gallery shows 4
    decimals; shared passes and batch-norm folding, decided per call, move a map's float rounding)."""
    from galleryvis import metrics
    from galleryvis.build import scoring
    from galleryvis.build.jobs import workspace

    toml = MANIFEST + "\n[metrics]\nenabled = true\nsteps = 4\nsanity_steps = 2\n"
    (project / "galleryvis.toml").write_text(toml)
    summary = _build(project)
    ws = workspace(load_manifest(project / "galleryvis.toml"))
    groups = scoring._groups(summary.jobs)
    assert len(groups) == 8
    for (_, _), group in groups.items():
        adapter = ws.adapter(group[0])
        x, targets = ws.inputs(group), [j.target for j in group]
        alone = metrics.deletion_insertion(adapter.model, x, torch.from_numpy(np.stack([j.result for j in group])),
                                           targets, steps=4, rank_by=scoring._rank_by(group[0].tech.name))
        sanity = metrics.sanity(adapter.model, x, group[0].tech.name, targets, group[0].layer, max_steps=2,
                                technique_params=group[0].params)
        for n, j in enumerate(group):
            assert abs(j.metrics["deletion_auc"] - alone.deletion_auc[n]) <= 1e-3
            assert abs(j.metrics["insertion_auc"] - alone.insertion_auc[n]) <= 1e-3
            if np.isnan(sanity.similarity[n]):  # a constant map has no rank correlation
                assert "sanity" not in j.metrics and "undefined" in j.skipped["sanity"]
            else:
                assert abs(j.metrics["sanity"] - sanity.similarity[n]) <= 1e-3


def test_a_build_without_shared_passes_gives_the_same_maps_and_scores(project):
    """--no-shared-passes (every technique computed and scored in calls of its own, what the
    bench compares with) changes the cost, not the gallery."""
    (project / "galleryvis.toml").write_text(MANIFEST + "\n[metrics]\nenabled = true\nsteps = 2\nsanity_steps = 1\n")
    shared = {(j.model.id, j.image.id, j.tech.id): j for j in _build(project).jobs}
    alone = _build(project, share_passes=False, cache_dir=project / "other-cache").jobs
    assert len(alone) == len(shared) == 16
    for j in alone:
        twin = shared[(j.model.id, j.image.id, j.tech.id)]
        if np.ptp(twin.result) == 0:
            np.testing.assert_array_equal(j.result, twin.result)
        else:  # batch-norm folding (decided per call) moves float rounding, and a ReLU gate may flip
            assert np.corrcoef(j.result.ravel(), twin.result.ravel())[0, 1] > 0.9999
        assert j.metrics.keys() == twin.metrics.keys()
        assert all(abs(j.metrics[k] - twin.metrics[k]) <= 1e-3 for k in j.metrics)


def test_a_build_reports_its_stages_passes_and_costliest_cells(project):
    from galleryvis.build.progress import STAGES

    (project / "galleryvis.toml").write_text(MANIFEST + "\n[metrics]\nenabled = true\nsteps = 2\nsanity = false\n")
    result = CliRunner().invoke(main, ["build", str(project / "galleryvis.toml"), "--profile", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((project / "site" / "build.json").read_text())["stages"]
    assert set(report["seconds"]) == set(STAGES) - {"synthesis", "concepts"}  # no synthesis or concept row here
    assert all(v >= 0 for v in report["seconds"].values())
    # predictions (4) + the cells' shared passes + deletion / insertion: well over a dozen forwards
    assert report["model_passes"] > 12 and report["images_through_models"] >= report["model_passes"]
    assert "attribution" in result.output and "model passes" in result.output
    cells = re.findall(r"^(?:mobilenet_v3_small|resnet18) / (?:cat|coffee)\.png / [a-z_]+: (\d+\.\d\d) s", result.output, re.M)
    assert len(cells) == 10 and [float(c) for c in cells] != [0.0] * 10
    summary = _build(project, force=True)
    assert "scoring" in summary.line() and "model passes" in summary.line()


def test_road_is_shown_beside_deletion_and_insertion_when_asked_for_and_cached(project, monkeypatch):
    toml = MANIFEST.split("[[models]]")[0] + """
[[models]]
name = "resnet18"
weights = "none"
size = 64

[[techniques]]
name = "gradcam"

[metrics]
enabled = true
steps = 2
sanity = false
road = true
road_percentile = 30
"""
    (project / "galleryvis.toml").write_text(toml)
    _build(project)
    md = (project / "site" / "gallery.md").read_text()
    assert "Deletion AUC" in md and "ROAD MoRF" in md and "ROAD LeRF" in md

    from galleryvis import metrics

    def no_recompute(*_a, **_k):
        raise AssertionError("ROAD scores must come from the cache")

    monkeypatch.setattr(metrics, "road", no_recompute)
    assert _build(project).failed == 0
    assert (project / "site" / "gallery.md").read_text() == md


def test_out_of_memory_retries_with_smaller_chunks(project, monkeypatch):
    from galleryvis.build import executor

    real = executor.attribute_calls
    sizes = []

    def tight(model, x, *args, batch_size, **kw):
        sizes.append((batch_size.backward, batch_size.forward))
        if batch_size.backward > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, x, *args, batch_size=batch_size, **kw)

    monkeypatch.setattr(executor, "attribute_calls", tight)  # what the compute stage calls
    summary = _build(project, batch_size=8)
    assert summary.failed == 0 and summary.computed == 16
    assert sizes[:3] == [(8, 32), (4, 16), (2, 8)]


def test_nan_maps_fail_their_cell_with_a_message(project, monkeypatch):
    real = registry.get("gradcam")

    def poisoned(ctx, **kw):
        return real.fn(ctx, **kw) * float("nan")

    monkeypatch.setitem(registry._REGISTRY, "gradcam", registry.Technique(**{**real.__dict__, "fn": poisoned}))
    summary = _build(project)
    assert summary.failed == 4 and all("NaN" in f for f in summary.failures)
    assert "NaN" in (project / "site" / "gallery.md").read_text()


def test_cache_commands_and_flags(project, monkeypatch):
    monkeypatch.chdir(project)
    runner = CliRunner()
    assert runner.invoke(main, ["build", "-q", "--no-cache"]).exit_code == 0
    assert not (project / ".galleryvis-cache").exists() or not list((project / ".galleryvis-cache").glob("??/*.npy"))
    assert runner.invoke(main, ["build", "-q"]).exit_code == 0
    info = runner.invoke(main, ["cache", "info"])
    assert info.exit_code == 0 and "entries" in info.output
    forced = runner.invoke(main, ["build", "--force"])
    assert forced.exit_code == 0 and "16 computed, 0 cached" in forced.output
    (project / "galleryvis.toml").write_text(MANIFEST.replace('[[techniques]]\nname = "vanilla"\n', ""))
    cleaned = runner.invoke(main, ["cache", "clean", "--unreferenced"])
    assert cleaned.exit_code == 0 and "removed 4 entries" in cleaned.output, cleaned.output
    assert runner.invoke(main, ["cache", "clean"]).exit_code == 0
    assert not (project / ".galleryvis-cache").exists()


def test_explain_writes_one_picture_through_the_cache(project, monkeypatch):
    monkeypatch.chdir(project)
    args = ["explain", "cat.png", "--model", "resnet18", "--weights", "none", "--technique", "gradcam",
            "--variant", "overlay", "-o", "out/cat-gradcam.png"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    from PIL import Image

    assert Image.open(project / "out" / "cat-gradcam.png").size == (224, 224)
    entries = list((project / ".galleryvis-cache").glob("??/*.npy"))
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and list((project / ".galleryvis-cache").glob("??/*.npy")) == entries
    bad = CliRunner().invoke(main, args[:-4] + ["--variant", "nope", "-o", "x.png"])
    assert bad.exit_code == 2 and "overlay" in bad.output


def test_built_site_views_links_and_tables(project):
    """The 2-image x 2-model x 4-technique build: every view, valid HTML, every picture and
    link resolves, the model page's grid has one row per variant and one column per image."""
    import html5lib
    from test_render import _LINK, expand, grids, header_texts, local, parse, row_labels

    _build(project)
    root = project / "site"
    pages = sorted(p.name for p in root.glob("*.html"))
    assert pages == ["build.html", "compare-cat.html", "compare-coffee.html", "compare.html", "index.html",
                     "model-mobilenet-v3-small.html", "model-resnet18.html", "technique-gradcam.html",
                     "technique-guided-backprop.html", "technique-integrated-gradients.html",
                     "technique-vanilla.html", "techniques.html"]
    for page in pages:
        html5lib.HTMLParser(strict=True).parse((root / page).read_bytes())
        tree = parse(root / page)
        for el in tree.iter():
            for attr in ("src", "href"):
                if (url := el.get(attr)) and (target := local(url)):
                    assert (root / target).is_file(), f"{page}: {url}"
    tables = grids(parse(root / "model-resnet18.html"))  # gradients, CAMs, signed maps
    assert len(tables) == 3
    for table in tables:
        assert len(header_texts(table)) == 3  # the technique column and two images
        assert "Target class: espresso (967)" in header_texts(table)[2]
        assert all(len(r) == 3 for r in expand(table))
    # each group's original row + vanilla 2 + guided backprop 4 / gradcam 3 / integrated gradients 2 variants
    assert [len(row_labels(t)) for t in tables] == [7, 4, 3]
    md = (root / "gallery.md").read_text()
    for url in (a or b for a, b in _LINK.findall(md)):
        if (target := local(url)):
            assert (root / target).is_file(), url


def test_ids_that_differ_only_in_punctuation_get_their_own_files(project):
    (project / "galleryvis.toml").write_text(MANIFEST + """
[[techniques]]
name = "smoothgrad"
id = "sg_a"
params = { samples = 2, sigma = 0.1 }

[[techniques]]
name = "smoothgrad"
id = "sg-a"
params = { samples = 2, sigma = 0.9 }
""")
    _build(project)
    pngs = [p.name for p in (project / "site" / "img").rglob("*.webp")]
    a = sorted(n for n in pngs if n.startswith("sg-a-") and not n.startswith("sg-a-2-"))
    b = sorted(n for n in pngs if n.startswith("sg-a-2-"))
    assert a and len(a) == len(b)
    resnet_cat = project / "site" / "img" / "resnet18" / "cat"
    first = sorted(resnet_cat.glob("sg-a-[!2]*.webp"))
    second = sorted(resnet_cat.glob("sg-a-2-*.webp"))
    assert first and [p.read_bytes() for p in first] != [p.read_bytes() for p in second]


# -- stages: a plain Job, an Executor protocol ------------------------------------------------
def _plain(value: object) -> bool:
    """No model, tensor or decoded image anywhere inside ``value``."""
    from dataclasses import fields, is_dataclass

    from PIL import Image

    if isinstance(value, (torch.nn.Module, torch.Tensor, Image.Image)):
        return False
    if is_dataclass(value):
        return all(_plain(getattr(value, f.name)) for f in fields(value))
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return True


def test_planned_jobs_are_plain_picklable_data(project):
    import pickle

    from galleryvis.storage.cache import Cache
    from galleryvis.build.jobs import plan, workspace

    manifest = load_manifest(project / "galleryvis.toml")
    jobs, _ = plan(manifest, workspace(manifest), Cache(project / "cache"), force=False)
    assert len(jobs) == 16 and all(_plain(j) for j in jobs)
    again = pickle.loads(pickle.dumps(jobs))
    assert [(j.key, j.model, j.image, j.tech, j.params, j.layer, j.target) for j in again] == \
        [(j.key, j.model, j.image, j.tech, j.params, j.layer, j.target) for j in jobs]


def test_class_visualization_is_planned_at_each_models_input_size_unless_the_manifest_sets_one(project):
    from galleryvis.storage.cache import Cache
    from galleryvis.build.jobs import plan, workspace

    toml = MANIFEST.replace('name = "resnet18"\nweights = "none"\nsize = 64', 'name = "resnet18"\nweights = "none"\nsize = 48')
    toml += '[[techniques]]\nname = "class_visualization"\n\n' \
            '[[techniques]]\nname = "class_visualization"\nid = "small"\nparams = { size = 32 }\n'
    (project / "galleryvis.toml").write_text(toml)
    manifest = load_manifest(project / "galleryvis.toml")
    jobs, _ = plan(manifest, workspace(manifest), Cache(project / "cache"), force=False)
    sizes = {(j.model.name, j.tech.id): j.params["size"] for j in jobs if j.tech.name == "class_visualization"}
    assert sizes == {("mobilenet_v3_small", "class_visualization"): 64, ("resnet18", "class_visualization"): 48,
                     ("mobilenet_v3_small", "small"): 32, ("resnet18", "small"): 32}


def test_each_class_visualization_shows_its_targets_rank_under_the_other_models(project, monkeypatch):
    head = MANIFEST.split("[[techniques]]")[0]
    toml = head + '[[techniques]]\nname = "class_visualization"\nparams = { steps = 2 }\n\n[metrics]\nenabled = true\n'
    (project / "galleryvis.toml").write_text(toml)
    assert _build(project).failed == 0
    cells = _records(project)["cells"]
    other = {"mobilenet_v3_small": "resnet18", "resnet18": "mobilenet_v3_small"}
    assert len(cells) == 4
    for cell in cells:
        assert set(cell["metrics"]) == {f"rank under {other[cell['model_id']]}"}
        assert all(1 <= r <= 1000 and r == int(r) for r in cell["metrics"].values())
    md = (project / "site" / "gallery.md").read_text()

    from galleryvis.build import scoring

    def no_recompute(*_a, **_k):
        raise AssertionError("ranks must come from the cache")

    monkeypatch.setattr(scoring, "class_rank", no_recompute)
    assert _build(project).computed == 0
    assert _records(project)["cells"] == cells and (project / "site" / "gallery.md").read_text() == md


def test_a_row_with_its_own_class_that_reads_no_image_is_made_once_per_model_and_shown_side_by_side(project):
    from galleryvis.storage.cache import Cache
    from galleryvis.build.jobs import plan, workspace

    head = MANIFEST.split("[[techniques]]")[0]
    toml = head + ('[[techniques]]\nname = "gradcam"\ntarget = "goldfish"\n\n'
                   '[[techniques]]\nname = "class_visualization"\nid = "No regularization"\ntarget = 130\n'
                   'params = { param = "pixel", steps = 2 }\n\n'
                   '[[techniques]]\nname = "class_visualization"\nid = "L2 regularization"\ntarget = 130\n'
                   'params = { param = "pixel", regularization = "l2", steps = 2 }\n\n[metrics]\nenabled = true\n'
                   'sanity = false\nsteps = 2\n')
    (project / "galleryvis.toml").write_text(toml)
    manifest = load_manifest(project / "galleryvis.toml")
    jobs, _ = plan(manifest, workspace(manifest), Cache(project / "cache"), force=False)
    # an attribution row explains its own class on every image; the class images are one per model
    assert sorted((j.tech.id, j.target) for j in jobs if j.model.name == "resnet18") == [
        ("L2 regularization", 130), ("No regularization", 130), ("gradcam", 1), ("gradcam", 1)]
    keys = {j.key for j in jobs if not j.per_image}
    assert len(keys) == 4
    assert _build(project).failed == 0
    cells = [c for c in _records(project)["cells"] if c["technique_id"] != "gradcam"]
    assert len(cells) == 4 and {c["image_id"] for c in cells} == {""}
    other = {"mobilenet_v3_small": "resnet18", "resnet18": "mobilenet_v3_small"}
    assert all(set(c["metrics"]) == {f"rank under {other[c['model_id']]}"} for c in cells)

    # the model page and gallery.md show them side by side: a column per row, the model's row of pictures
    page = (project / "site" / "model-resnet18.html").read_text()
    section = page.split('id="feature-visualization-side-by-side"', 1)[1].split("</section>", 1)[0]
    heads = re.findall(r'<th scope="col"[^>]*>(?:<a [^>]*>)?([^<]+)', section)
    assert heads == ["Model", "No regularization", "L2 regularization"]
    assert section.count('<img class="thumb"') == 2 and "Target class: flamingo (130)" in section
    assert "rank under mobilenet_v3_small" in section
    md = (project / "site" / "gallery.md").read_text()
    assert "| Model | No regularization | L2 regularization |" in md

    # another image changes nothing of them: the class images read no image
    shutil.copy(PHOTOS / "rocket.jpg", project / "rocket.jpg")
    (project / "galleryvis.toml").write_text(toml.replace('[[images]]\npath = "cat.png"',
                                                          '[[images]]\npath = "rocket.jpg"\n\n[[images]]\npath = "cat.png"'))
    manifest = load_manifest(project / "galleryvis.toml")
    jobs, _ = plan(manifest, workspace(manifest), Cache(project / ".galleryvis-cache"), force=False)
    assert {j.key for j in jobs if not j.per_image} == keys and all(j.cached for j in jobs if not j.per_image)


def test_a_build_runs_its_cells_through_the_executor_it_is_given(project):
    from galleryvis.build.executor import LocalExecutor
    from galleryvis.build.jobs import workspace

    manifest = load_manifest(project / "galleryvis.toml")
    seen: list[str] = []

    class Recording:
        """An executor that ships each job through pickle (as a cluster would) to a local one."""

        def run(self, jobs, cache, progress, seconds):
            import pickle

            shipped = pickle.loads(pickle.dumps(list(jobs)))
            LocalExecutor(workspace(manifest), batch_size=4).run(shipped, cache, progress, seconds)
            for job, done in zip(jobs, shipped):
                job.result, job.error, job.trace, job.unit = done.result, done.error, done.trace, done.unit
            seen.extend(j.key for j in jobs)

    summary = build(manifest, Options(quiet=True), executor=Recording())
    assert (summary.computed, summary.failed) == (16, 0) and len(seen) == 16
    again = _build(project)  # everything the executor computed is in the cache
    assert (again.computed, again.cached) == (0, 16)


# -- the cache knows which weights it holds ---------------------------------------------------
RANDOM_INIT = """
[[images]]
path = "cat.png"

[[models]]
name = "resnet18"
weights = "none"
size = 64
"""


def _random_init_gallery(folder: Path, techniques: list[str], model: str = "") -> Path:
    """``folder`` holding cat.png and a manifest of random-init ResNet-18 with ``techniques``."""
    folder.mkdir(exist_ok=True)
    shutil.copy(PHOTOS / "cat.png", folder / "cat.png")
    (folder / "galleryvis.toml").write_text(
        RANDOM_INIT + model + "".join(f'\n[[techniques]]\nname = "{t}"\n' for t in techniques))
    return folder


def _pages(project: Path) -> dict[str, bytes]:
    """The built site's files, but for build.json (its timings differ from build to build)."""
    return {k: v for k, v in _snapshot(project / "site").items() if not k.endswith("build.json")}


def test_a_technique_added_to_a_random_init_gallery_explains_the_same_network(tmp_path):
    grown = _random_init_gallery(tmp_path / "grown", ["gradcam"])
    _build(grown)
    _random_init_gallery(grown, ["gradcam", "vanilla"])
    summary = _build(grown)
    assert (summary.computed, summary.cached) == (1, 1)
    whole = _random_init_gallery(tmp_path / "whole", ["gradcam", "vanilla"])
    assert _build(whole).computed == 2  # both maps, and the target, from one network in one build
    assert _pages(grown) == _pages(whole)


def test_two_fresh_builds_of_a_random_init_gallery_are_byte_identical_and_the_seed_chooses_the_network(tmp_path):
    first = _random_init_gallery(tmp_path / "first", ["gradcam", "vanilla"])
    second = _random_init_gallery(tmp_path / "second", ["gradcam", "vanilla"])
    _build(first)
    _build(second)
    pages = _pages(first)
    assert any(k.endswith(".webp") for k in pages) and pages == _pages(second)
    manifest = first / "galleryvis.toml"
    manifest.write_text(manifest.read_text().replace("size = 64", "size = 64\nseed = 1"))
    summary = _build(first)
    assert (summary.computed, summary.cached) == (2, 0) and _pages(first) != pages


def test_a_factory_whose_weights_change_between_builds_recomputes(tmp_path, monkeypatch):
    (tmp_path / "changing_net.py").write_text(
        "from pathlib import Path\n"
        "import torch\n"
        "from torch import nn\n"
        "def net():\n"
        "    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                          nn.Flatten(), nn.Linear(8, 5))\n"
        "    with torch.no_grad():  # weights from a file the manifest does not name\n"
        "        model[0].weight.mul_(float((Path(__file__).parent / 'scale.txt').read_text()))\n"
        "    return model\n")
    (tmp_path / "scale.txt").write_text("1.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    _random_init_gallery(tmp_path, ["vanilla"])
    (tmp_path / "galleryvis.toml").write_text((tmp_path / "galleryvis.toml").read_text().replace(
        'name = "resnet18"\nweights = "none"\nsize = 64', 'factory = "changing_net:net"\nsize = 32'))
    runner = CliRunner()

    def built() -> str:
        result = runner.invoke(main, ["build", str(tmp_path / "galleryvis.toml")])
        assert result.exit_code == 0, result.output
        return result.output

    assert "1 computed, 0 cached" in built()
    maps = {k: v for k, v in _pages(tmp_path).items() if k.startswith("img/net/")}
    assert maps
    again = built()  # built and hashed again (no stamp can vouch for it), found in the cache
    assert "0 computed, 1 cached" in again and "unchanged" not in again
    (tmp_path / "scale.txt").write_text("-3.0")
    assert "1 computed, 0 cached" in built()
    assert {k: v for k, v in _pages(tmp_path).items() if k.startswith("img/net/")} != maps
    import changing_net  # a weights file pins the weights: the stamp answers again, without the factory

    torch.save(changing_net.net().state_dict(), tmp_path / "w.pth")
    manifest = tmp_path / "galleryvis.toml"
    manifest.write_text(manifest.read_text().replace('factory = "changing_net:net"',
                                                     'factory = "changing_net:net"\nweights = "w.pth"'))
    assert "1 computed, 0 cached" in built()  # the key names the file's hash now
    assert "unchanged" in built()


# -- pictures people can read ------------------------------------------------------------------
def _records(project: Path) -> dict:
    import json

    return json.loads((project / "site" / "gallery.json").read_text())


def test_every_map_picture_is_readable_and_the_site_is_light(project):
    """Every map (not the photos, not synthesized images) spans at least 48 grey levels between
    its 2nd and 98th luminance percentiles, and a cell weighs at most 60 KB in all."""
    import numpy as np
    from PIL import Image

    _build(project)
    site = project / "site"
    cells = [c for c in _records(project)["cells"] if c["status"] == "ok"]
    checked = 0
    for cell in cells:
        for v in cell["variants"]:
            if v["key"] == "image":
                continue
            lum = np.asarray(Image.open(site / v["src"]).convert("L"), float)
            if lum.max() - lum.min() < 2:  # a genuinely constant map
                continue
            spread = np.percentile(lum, 98) - np.percentile(lum, 2)
            assert spread >= 48, (cell["technique_id"], cell["model_id"], cell["image_id"], v["key"], spread)
            checked += 1
    assert checked >= 30
    weight = sum(p.stat().st_size for d in ("img", "thumbs", "downloads") for p in (site / d).rglob("*") if p.is_file())
    assert weight / len(cells) <= 60_000


def test_a_per_row_scale_gives_the_whole_row_one_range(project):
    (project / "galleryvis.toml").write_text(MANIFEST.replace('title = "test gallery"',
                                                              'title = "test gallery"\nscale = "per-row"'))
    _build(project)
    ranges: dict[tuple[str, str], set[str]] = {}
    for cell in _records(project)["cells"]:
        for v in cell["variants"]:
            ranges.setdefault((cell["technique_id"], v["key"]), set()).add(v["range"])
    assert ranges and all(len(r) == 1 and "" not in r for r in ranges.values())
    html = (project / "site" / "model-resnet18.html").read_text()
    assert "one scale per technique row" in html and 'class="range">scale ' in html


def test_raw_maps_are_a_zip_per_model_when_asked(project):
    import io
    import zipfile

    import numpy as np

    _build(project)
    assert not (project / "site" / "downloads").exists()  # opt-in: about 160 KB per cell
    (project / "galleryvis.toml").write_text(MANIFEST.replace('title = "test gallery"',
                                                              'title = "test gallery"\nraw_maps = true'))
    _build(project)
    site = project / "site"
    with zipfile.ZipFile(site / "downloads" / "resnet18-maps.zip") as zf:
        names = sorted(zf.namelist())
        assert names == sorted(f"{i}/{t}.npy" for i in ("cat", "coffee")
                               for t in ("gradcam", "guided-backprop", "integrated-gradients", "vanilla"))
        cam = np.load(io.BytesIO(zf.read("cat/gradcam.npy")))
    assert cam.dtype == np.float16 and cam.shape == (1, 64, 64)
    assert 'href="downloads/resnet18-maps.zip"' in (site / "build.html").read_text()


def test_another_family_declared_in_families_alone_is_computed_cached_timed_and_shown(tmp_path, monkeypatch):
    """Another family is its facts in galleryvis.families and how its cells are computed in the compute
    stage's COMPUTE (here: as attribution's are), and its build stage's name: a technique of it is
    planned, computed, cached, timed and drawn in a table of its own, and left unscored when its
    family says so, with no other module changed."""
    from galleryvis import families
    from galleryvis.build import executor, progress

    class Energy(families.Attribution):
        name, title, scored, split_by_kind, headline = "energy", "Energy", False, False, False

    monkeypatch.setitem(families.FAMILIES, "energy", Energy())
    monkeypatch.setitem(executor.COMPUTE, "energy", executor.AttributionCompute())
    monkeypatch.setattr(progress, "STAGES", (*progress.STAGES, "energy"))
    registry.names()  # the built-ins first, then a registry of our own for this test
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.technique("channel_energy", output="cam", layer="one", family="energy", needs=("forward",),
                        paper="-", summary="The layer's mean squared activation at each position.")
    def channel_energy(ctx, *, layer):
        return ctx.grid(layer).nchw(ctx.forward().acts[layer]).pow(2).mean(1, keepdim=True)

    folder = _random_init_gallery(tmp_path / "three", ["gradcam", "channel_energy"])
    with (folder / "galleryvis.toml").open("a") as f:
        f.write("\n[metrics]\nenabled = true\nsanity = false\nsteps = 4\n")
    summary = _build(folder, batch_size=4)
    assert (summary.computed, summary.failed) == (2, 0)
    report = json.loads((folder / "site" / "build.json").read_text())
    assert {"attribution", "energy"} <= set(report["stages"]["seconds"])
    gallery = json.loads((folder / "site" / "gallery.json").read_text())
    metrics = {c["technique_id"]: c["metrics"] for c in gallery["cells"]}
    assert "deletion_auc" in metrics["gradcam"] and metrics["channel_energy"] == {}
    assert "### Energy" in (folder / "site" / "gallery.md").read_text()
    again = _build(folder, batch_size=4)
    assert (again.computed, again.cached) == (0, 2)
