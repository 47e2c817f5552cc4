"""The command line: every manifest problem is one clear line, exit code 2, no traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from galleryvis.cli import main

PHOTOS = Path(__file__).resolve().parent.parent / "input_images"


def run(tmp_path: Path, toml: str, *args: str):
    (tmp_path / "gallery.toml").write_text(toml)
    result = CliRunner().invoke(main, ["build", str(tmp_path / "gallery.toml"), "--dry-run", *args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(PHOTOS / "cat.png", tmp_path / "cat.png")
    return tmp_path


MODEL = '[[models]]\nname = "efficientnet_lite0"\n'
IMAGE = '[[images]]\npath = "cat.png"\n'
TECH = '[[techniques]]\nname = "gradcam"\n'


@pytest.mark.parametrize("toml, expected", [
    ('[[images]]\npath = "missing.png"\n' + MODEL + TECH, "images[0].path"),
    (IMAGE + '[[models]]\nname = "resnet5"\n' + TECH, "did you mean"),
    (IMAGE + MODEL + '[[techniques]]\nname = "gradcam_plus"\n', "unknown technique"),
    (IMAGE + MODEL + '[[techniques]]\nname = "smoothgrad"\nparams = {sample = 3}\n', "did you mean: samples"),
    (IMAGE + MODEL + '[[techniques]]\nname = "smoothgrad"\nparams = {samples = "many"}\n', "samples"),
    (IMAGE + MODEL + TECH + '[gallery]\ntitel = "x"\n', "titel"),
    (IMAGE + MODEL + TECH + '[gallery]\ndevice = "tpu"\n', "gallery.device"),
    ('[[images]\npath = "cat.png"\n', "gallery.toml"),
])
def test_static_manifest_errors(folder, toml, expected):
    result = run(folder, toml)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "gallery.toml" in result.output


def test_undecodable_image(folder):
    (folder / "fake.jpg").write_text("not an image")
    result = run(folder, '[[images]]\npath = "fake.jpg"\n' + MODEL + TECH)
    assert result.exit_code == 2 and "fake.jpg" in result.output


def test_all_problems_are_reported_together(folder):
    result = run(folder, '[[images]]\npath = "missing.png"\n[[models]]\nname = "resnet5"\n[[techniques]]\nname = "gradcamm"\n')
    assert result.exit_code == 2
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) >= 3


def test_unknown_layer_lists_close_names(folder):
    result = run(folder, IMAGE + MODEL + 'layers = { gradcam = "_blocks.15.relu" }\n' + TECH)
    assert result.exit_code == 2
    assert "models[0].layers.gradcam" in result.output and "_blocks.15._relu" in result.output


def test_target_out_of_range(folder):
    result = run(folder, '[[images]]\npath = "cat.png"\ntarget = 1000\n' + MODEL + TECH)
    assert result.exit_code == 2 and "out of range" in result.output and "images[0].target" in result.output


def test_unknown_target_label_suggests(folder):
    result = run(folder, '[[images]]\npath = "cat.png"\ntarget = "tabbby"\n' + MODEL + TECH)
    assert result.exit_code == 2 and "tabby" in result.output


def test_weights_that_cannot_be_fetched(folder, monkeypatch):
    import torchvision.models._api as api

    def offline(*_a, **_k):
        raise OSError("no network")

    monkeypatch.setenv("TORCH_HOME", str(folder / "torch"))
    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    result = run(folder, IMAGE + '[[models]]\nname = "resnet18"\nweights = "DEFAULT"\n' + TECH)
    assert result.exit_code == 2
    assert "models[0]" in result.output and "resnet18-f37072fd.pth" in result.output and "offline" in result.output


@pytest.mark.parametrize("args, gallery, field", [  # (a cache may be at a URL: test_remote_cache)
    (["build", "gallery.toml"], '[gallery]\noutput = "s3://bucket/site"\n', "gallery.output"),
    (["explain", "cat.png", "-o", "s3://bucket/cat.png"], "", "--output"),
])
def test_a_url_for_a_local_folder_is_one_line_exit_2_and_creates_nothing(folder, monkeypatch, args, gallery, field):
    monkeypatch.chdir(folder)
    (folder / "gallery.toml").write_text(IMAGE + MODEL + TECH + gallery)
    before = sorted(folder.rglob("*"))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0] and "is a URL" in lines[0], lines
    assert sorted(folder.rglob("*")) == before  # no folder named "s3:" (or anything else)


def test_dry_run_lists_the_plan(folder):
    result = run(folder, IMAGE + MODEL + TECH)
    assert result.exit_code == 0, result.output
    assert "efficientnet_lite0 / gradcam: 1 to compute, 0 cached" in result.output


@pytest.mark.slow
def test_init_writes_a_starter_manifest_that_validates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(PHOTOS, tmp_path / "input_images")
    result = CliRunner().invoke(main, ["init", "--github-pages"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / ".github/workflows/galleryvis-pages.yml").is_file()
    dry = CliRunner().invoke(main, ["build", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    again = CliRunner().invoke(main, ["init"])
    assert again.exit_code == 2 and "exists" in again.output


def test_layers_marks_the_default_cam_layer():
    result = CliRunner().invoke(main, ["layers", "resnet18", "--size", "64"])
    assert result.exit_code == 0, result.output
    marked = [line for line in result.output.splitlines() if line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1] == "layer4"


def test_techniques_lists_parameters():
    result = CliRunner().invoke(main, ["techniques"])
    assert "smoothgrad" in result.output and "samples=50" in result.output


def test_layers_shows_each_layers_grid():
    """Swin-T at 64x64: patch grid 16x16, last stage 2x2; its blocks output channels last."""
    result = CliRunner().invoke(main, ["layers", "swin_t", "--size", "64"])
    assert result.exit_code == 0, result.output
    rows = {line[2:].split()[0]: line for line in result.output.splitlines()}
    assert rows["features.0.0"].endswith(" 16x16")  # the patch embedding's convolution
    assert rows["features.7.1.norm1"].endswith("1x2x2x768          2x2 (channels last)")
    assert rows["features.7.1"].startswith("* ")
    assert rows["head"].split()[-2:] == ["1x1000", "-"]  # no grid


def test_models_lists_every_source_bundled_first_with_what_works_offline():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("bundled: ") and lines[1].split() == ["efficientnet_lite0", "works", "offline"]
    heads = [line.split(":")[0] for line in lines if not line.startswith("  ")]
    assert heads[:3] == ["bundled", "torchvision", "timm"] and {"huggingface", "factory"} <= set(heads)
    torchvision = next(i for i, line in enumerate(lines) if line.startswith("torchvision: "))
    assert any(line.split()[:1] == ["resnet50"] for line in lines[torchvision:])
    listing = {entry["source"]: entry for entry in json.loads(CliRunner().invoke(main, ["models", "--json"]).output)}
    assert list(listing) == heads
    assert {"name": "efficientnet_lite0", "offline": True} in listing["bundled"]["models"]
    assert "resnet50" in [m["name"] for m in listing["torchvision"]["models"]]
    assert "timm:NAME" in listing["timm"]["usage"] and "local Hugging Face cache" in listing["huggingface"]["usage"]


def test_models_says_how_to_install_a_missing_source(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else find_spec(name, *a))
    listing = {e["source"]: e for e in json.loads(CliRunner().invoke(main, ["models", "--json"]).output)}
    assert listing["timm"]["install"] == "pip install 'galleryvis[timm]'" and listing["timm"]["models"] == []
    text = CliRunner().invoke(main, ["models"]).output
    assert "  not installed: pip install 'galleryvis[timm]'" in text.splitlines()


def test_techniques_as_json():
    result = CliRunner().invoke(main, ["techniques", "--json"])
    assert result.exit_code == 0, result.output
    techniques = {t["name"]: t for t in json.loads(result.output)}
    assert techniques["smoothgrad"]["params"]["samples"] == 50 and "gradcam" in techniques


def test_build_reads_a_folders_manifest(folder):
    (folder / "galleryvis.toml").write_text(IMAGE + MODEL + TECH)
    result = CliRunner().invoke(main, ["build", str(folder), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "efficientnet_lite0 / gradcam: 1 to compute, 0 cached" in result.output
    (folder / "other").mkdir()
    empty = CliRunner().invoke(main, ["build", str(folder / "other"), "--dry-run"])
    assert empty.exit_code == 2 and "galleryvis.toml: no such manifest file" in empty.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of an absent CUDA")
def test_device_overrides_the_manifest_and_is_checked_first(folder):
    toml = IMAGE + MODEL + TECH + '[gallery]\ndevice = "cuda"\n'
    assert run(folder, toml).exit_code == 2  # the manifest's device is absent here
    assert run(folder, toml, "--device", "cpu").exit_code == 0
    for args in (["build", str(folder / "gallery.toml"), "--dry-run"], ["layers", "resnet18"],
                 ["explain", str(folder / "cat.png"), "-o", str(folder / "x.png")]):
        for device, problem in (("tpu", "unknown device 'tpu'"), ("cuda", "CUDA is not available")):
            result = CliRunner().invoke(main, [*args, "--device", device])
            assert result.exit_code == 2 and result.output.startswith("error: --device: ") and problem in result.output
            assert len(result.output.splitlines()) == 1, result.output
    assert not (folder / "x.png").exists()


def test_layers_runs_on_the_device_asked_for():
    result = CliRunner().invoke(main, ["layers", "resnet18", "--size", "64", "--device", "cpu"])
    assert result.exit_code == 0 and "layer4" in result.output


def test_build_open_opens_the_landing_page(folder, monkeypatch):
    import webbrowser

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    monkeypatch.chdir(folder)
    (folder / "galleryvis.toml").write_text(IMAGE + '[[models]]\nname = "resnet18"\nweights = "none"\nsize = 64\n'
                                            '[[techniques]]\nname = "vanilla"\n[metrics]\nenabled = false\n')
    for _ in range(2):  # built, then unchanged (from the stamp): both open the page
        result = CliRunner().invoke(main, ["build", "-q", "--open"])
        assert result.exit_code == 0, result.output
    assert opened == [(folder / "site" / "index.html").resolve().as_uri()] * 2
    assert CliRunner().invoke(main, ["build", "--dry-run", "--open"]).exit_code == 0 and len(opened) == 2


def test_a_second_build_fails_on_the_lock_before_loading_any_model(folder, monkeypatch):
    from galleryvis.build import pipeline
    from galleryvis.storage.sitefiles import build_lock

    loaded: list[object] = []
    monkeypatch.setattr(pipeline, "workspace", lambda manifest: loaded.append(manifest))
    (folder / "gallery.toml").write_text(IMAGE + MODEL + TECH)
    with build_lock(folder / ".galleryvis-cache"):
        result = CliRunner().invoke(main, ["build", str(folder / "gallery.toml")])
    assert result.exit_code == 2 and "another galleryvis build" in result.output and "--wait" in result.output
    assert loaded == []


def test_a_misspelt_model_suggests_the_ones_that_load_offline_first():
    result = CliRunner().invoke(main, ["layers", "efficientnet_lite"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: efficientnet_lite: unknown model 'efficientnet_lite' "
                                    "(did you mean: efficientnet_lite0, ")
