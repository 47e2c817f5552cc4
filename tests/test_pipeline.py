"""Builds: incremental through the cache, never half-written, failures isolated."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from galleryvis import registry
from galleryvis.cli import main
from galleryvis.manifest import load_manifest
from galleryvis.pipeline import Options, build

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


def test_failing_cell_is_isolated_and_shown(project, monkeypatch):
    real = registry.get("vanilla")

    def explode(ctx):
        if (ctx.target == 967).any():  # the coffee photo's target, espresso
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
    from galleryvis.sitefiles import build_lock

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
    monkeypatch.setattr(metrics, "sanity", no_recompute)
    summary = _build(project)
    assert summary.computed == 0 and summary.failed == 0
    assert sorted((project / ".galleryvis-cache").glob("??/*.json")) == entries
    assert (project / "site" / "gallery.md").read_text() == md
