"""The command line: every manifest problem is one clear line, exit code 2, no traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
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
