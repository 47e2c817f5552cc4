"""Manifest parsing and validation: every error names file, field and problem; nothing crashes."""
from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from galleryvis import registry
from galleryvis.config import schema
from galleryvis.config.manifest import (
    ConceptsSpec,
    GallerySpec,
    ImageSpec,
    Manifest,
    ManifestError,
    MetricsSpec,
    ModelSpec,
    TechniqueSpec,
    check_against_models,
    default_manifest,
    load_manifest,
    parse_manifest,
    starter_manifest,
)

MODEL = '[[models]]\nname = "resnet18"\nweights = "none"\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A manifest folder holding two small photos and a text file."""
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "photos" / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "photos" / "b.jpg")
    (tmp_path / "photos" / "README.md").write_text("not an image")
    return tmp_path


def write(folder: Path, text: str, name: str = "gallery.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load(folder: Path, body: str, images: str = '[[images]]\npath = "photos/*"\n',
         models: str = MODEL) -> Manifest:
    return load_manifest(write(folder, body + images + models))


def errors(folder: Path, body: str, **parts: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load(folder, body, **parts)
    return info.value.errors


def only(errs: list[str]) -> str:
    assert len(errs) == 1, errs
    return errs[0]


# --- a valid manifest ---------------------------------------------------------------------


def test_valid_manifest_parses_into_frozen_specs(folder: Path) -> None:
    m = load(folder, """
[gallery]
title = "Mine"
description = "*hello*"
device = "cpu"
colormap = "viridis"
alpha = 1

[[techniques]]
name = "integrated_gradients"
params = { steps = 8 }

[[techniques]]
name = "integrated_gradients"
id = "ig_black"
params = { baseline = "black" }

[metrics]
enabled = true
steps = 10
substrate = "blur"
""")
    assert m.path == folder / "gallery.toml" and m.root == folder
    assert m.gallery == GallerySpec("Mine", "*hello*", folder / "site", "cpu", "viridis", 1.0)
    assert [t.id for t in m.techniques] == ["integrated_gradients", "ig_black"]
    assert m.techniques[0].params["steps"] == 8 and m.techniques[0].params["baseline"] == "zero"
    assert m.techniques[1].params["steps"] == 50 and m.techniques[1].field == "techniques[1]"
    assert m.metrics == MetricsSpec(enabled=True, steps=10, substrate="blur")
    assert m.models == (ModelSpec("resnet18", weights="none", id="resnet18", field="models[0]"),)
    with pytest.raises(AttributeError):
        m.gallery.title = "x"  # type: ignore[misc]


def test_defaults(folder: Path) -> None:
    m = load(folder, "")
    assert m.gallery == GallerySpec(output=folder / "site")
    assert m.metrics == MetricsSpec()
    # every attribution technique but those that read self-attention (a CNN has none) and D-RISE (detectors only)
    attribution = [n for n in registry.names("attribution")
                   if not registry.get(n).attention and "classification" in registry.get(n).tasks]
    assert [t.name for t in m.techniques] == attribution and len(attribution) > 3
    assert all(t.params == registry.get(t.name).params for t in m.techniques)
    assert {i.target for i in m.images} == {None}


def test_glob_expands_to_sorted_image_files_only(folder: Path) -> None:
    m = load(folder, "")
    assert [i.path for i in m.images] == [folder / "photos" / "a.png", folder / "photos" / "b.jpg"]
    assert {i.field for i in m.images} == {"images[0]"}


def test_overlapping_entries_are_kept_once_per_target(folder: Path) -> None:
    m = load(folder, "", images='[[images]]\npath = "photos/*"\n[[images]]\npath = "photos/a.png"\n'
                                '[[images]]\npath = "photos/a.png"\ntarget = 3\n')
    assert [(i.path.name, i.target) for i in m.images] == [("a.png", None), ("b.jpg", None), ("a.png", 3)]


def test_relative_paths_resolve_beside_the_manifest_not_the_cwd(
        folder: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "labels.txt").write_text("a\nb\n")
    (folder / "w.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    m = load(folder, '[gallery]\noutput = "out/html"\n', models=(
        '[[models]]\nfactory = "my_pkg.nets:build_net"\nweights = "w.pth"\nlabels = "labels.txt"\n'))
    assert m.gallery.output == folder / "out" / "html"
    assert m.images[0].path == folder / "photos" / "a.png"
    spec = m.models[0]
    assert (spec.name, spec.id, spec.factory) == ("build_net", "build_net", "my_pkg.nets:build_net")
    assert spec.weights == str(folder / "w.pth") and spec.labels == folder / "labels.txt"


def test_targets(folder: Path) -> None:
    m = load(folder, "", images='[[images]]\npath = "photos/a.png"\ntarget = 281\n'
                                '[[images]]\npath = "photos/b.jpg"\ntarget = "tabby"\n'
                                '[[images]]\npath = "photos/a.png"\ntarget = "TOP1"\n')
    assert [i.target for i in m.images] == [281, "tabby", None]


def test_model_options(folder: Path) -> None:
    m = load(folder, "", models="""
[[models]]
name = "resnet50"
weights = "ResNet50_Weights.IMAGENET1K_V2"
size = 256
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
layers = { gradcam = "layer4", layercam = ["layer3", "layer4"], eigencam = ["layer4"] }

[[models]]
name = "resnet50"
id = "resnet50_random"
weights = "None"

[[models]]
name = "efficientnet_lite0"
""")
    a, b, c = m.models
    assert a.weights == "IMAGENET1K_V2" and a.size == 256 and a.mean == (0.5, 0.5, 0.5)
    assert a.layers == {"gradcam": "layer4", "layercam": ("layer3", "layer4"), "eigencam": "layer4"}
    assert (b.id, b.weights) == ("resnet50_random", "none")
    assert (c.id, c.weights) == ("efficientnet_lite0", None)


# --- each validation error ----------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, '[gallery]\ntitle = "x"\ndevice = cpu\n'))
    msg = only(info.value.errors)
    assert msg.startswith("gallery.toml: invalid TOML") and "line 3" in msg


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.toml: no such file"):
        load_manifest(tmp_path / "nope.toml")


@pytest.mark.parametrize("body, field, hint", [
    ("[galery]\n", "galery", "did you mean: gallery?"),
    ("[gallery]\ntitel = 'x'\n", "gallery.titel", "did you mean: title?"),
    ("[metrics]\nenable = true\n", "metrics.enable", "did you mean: enabled?"),
    ("[[techniques]]\nname = 'gradcam'\nparam = {}\n", "techniques[0].param", "did you mean: params?"),
    ("[gallery]\nzzz = 1\n", "gallery.zzz", "allowed: title, description"),
])
def test_unknown_keys(folder: Path, body: str, field: str, hint: str) -> None:
    msg = only(errors(folder, body))
    assert msg.startswith(f"gallery.toml: {field}: unknown key") and hint in msg


def test_unknown_keys_in_images_and_models(folder: Path) -> None:
    errs = errors(folder, "", images='[[images]]\npath = "photos/a.png"\ntraget = 1\n',
                  models='[[models]]\nname = "resnet18"\nwieghts = "none"\n')
    assert errs == ["gallery.toml: images[0].traget: unknown key (did you mean: target?)",
                    "gallery.toml: models[0].wieghts: unknown key (did you mean: weights?)"]


@pytest.mark.parametrize("body, field, problem", [
    ("[gallery]\ntitle = 3\n", "gallery.title", "expected a string, got integer 3"),
    ("[gallery]\nalpha = 'x'\n", "gallery.alpha", "expected a number from 0 to 1, got string 'x'"),
    ("[gallery]\nalpha = 1.5\n", "gallery.alpha", "expected a number from 0 to 1"),
    ("gallery = 1\n", "gallery", "expected a table, got integer 1"),
    ("[metrics]\nenabled = 'yes'\n", "metrics.enabled", "expected true or false, got string 'yes'"),
    ("[metrics]\nsteps = 1\n", "metrics.steps", "must be from 2 to 1000, got 1"),
    ("[metrics]\nsteps = 2.5\n", "metrics.steps", "expected an integer, got float 2.5"),
    ("[metrics]\nsubstrate = 'blurr'\n", "metrics.substrate", "(did you mean: blur?)"),
    ("[gallery]\ncolormap = 'viridiss'\n", "gallery.colormap", "unknown colormap 'viridiss' (did you mean: viridis"),
    ("[techniques]\nname = 'gradcam'\n", "techniques", "expected an array of tables ([[techniques]]"),
    ("[[techniques]]\nname = 'gradcam'\nparams = 3\n", "techniques[0].params", "expected a table"),
])
def test_wrong_types(folder: Path, body: str, field: str, problem: str) -> None:
    msg = only(errors(folder, body))
    assert msg.startswith(f"gallery.toml: {field}: ") and problem in msg


def test_bad_device_suggests(folder: Path) -> None:
    msg = only(errors(folder, '[gallery]\ndevice = "cuad"\n'))
    assert msg == ("gallery.toml: gallery.device: must be one of auto, cpu, cuda, mps, got 'cuad'"
                   " (did you mean: cuda, cpu?)")


def test_missing_required_sections_and_keys(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, "[[techniques]]\nparams = {}\n"))
    errs = info.value.errors
    assert errs[0].startswith("gallery.toml: images: missing: add at least one [[images]]")
    assert errs[1].startswith("gallery.toml: models: missing: add at least one [[models]]")
    assert errs[2].startswith("gallery.toml: techniques[0]: missing required key 'name'")
    assert len(errs) == 3


def test_missing_path_and_name_in_entries(folder: Path) -> None:
    errs = errors(folder, "", images="[[images]]\ntarget = 1\n", models="[[models]]\nweights = 'none'\n")
    assert errs[0].startswith("gallery.toml: images[0]: missing required key 'path'")
    assert errs[1].startswith("gallery.toml: models[0]: missing required key 'name'")


def test_missing_image_file_and_folder(folder: Path) -> None:
    errs = errors(folder, "", images='[[images]]\npath = "photos/c.png"\n[[images]]\npath = "photos"\n')
    assert errs[0].startswith("gallery.toml: images[0].path: 'photos/c.png': no such file")
    assert errs[1].startswith("gallery.toml: images[1].path: 'photos': is a folder")
    assert "use a glob such as 'photos/*'" in errs[1]


def test_glob_matching_nothing(folder: Path) -> None:
    errs = errors(folder, "", images='[[images]]\npath = "pics/*.png"\n[[images]]\npath = "photos/*.md"\n')
    assert errs[0].startswith("gallery.toml: images[0].path: no image file matches 'pics/*.png'")
    assert errs[1].startswith("gallery.toml: images[1].path: no image file matches 'photos/*.md'")
    assert "only non-image files: README.md" in errs[1]


def test_undecodable_image(folder: Path) -> None:
    from galleryvis.build.jobs import read_images

    (folder / "photos" / "fake.jpg").write_text("this is text")
    manifest = load(folder, "")  # parsing never decodes: the pipeline does, naming the entry
    with pytest.raises(ManifestError) as info:
        read_images(manifest)
    msg = only(info.value.errors)
    assert msg.startswith("gallery.toml: images[0].path: ") and "fake.jpg" in msg


@pytest.mark.parametrize("target, problem", [
    ("-1", "class index must be 0 or more, got -1"),
    ("1.5", 'expected a class index, a class name or "top1", got float 1.5'),
    ("true", "got boolean True"),
    ("''", "must not be empty"),
])
def test_bad_target(folder: Path, target: str, problem: str) -> None:
    msg = only(errors(folder, "", images=f'[[images]]\npath = "photos/a.png"\ntarget = {target}\n'))
    assert msg.startswith("gallery.toml: images[0].target: ") and problem in msg


def test_unknown_model_suggests(folder: Path) -> None:
    msg = only(errors(folder, "", models='[[models]]\nname = "resnet5"\n'))
    assert msg.startswith("gallery.toml: models[0].name: unknown model 'resnet5' (did you mean: resnet50")


def test_unknown_model_suggests_what_loads_offline_first(folder: Path) -> None:
    msg = only(errors(folder, "", models='[[models]]\nname = "efficientnet_lite"\n'))
    assert "unknown model 'efficientnet_lite' (did you mean: efficientnet_lite0, " in msg


@pytest.mark.parametrize("model, field, problem", [
    ('name = "resnet18"\nweights = "IMAGENET1K_V3"', "models[0].weights",
     "unknown weights 'IMAGENET1K_V3' for resnet18 (did you mean: IMAGENET1K_V1"),
    ('name = "resnet18"\nweights = "VGG16_Weights.IMAGENET1K_V1"', "models[0].weights",
     "are not weights for resnet18 (they are ResNet18_Weights.*)"),
    ('name = "resnet18"\nweights = "missing.pth"', "models[0].weights", "weights file 'missing.pth': no such file"),
    ('name = "efficientnet_lite0"\nweights = "IMAGENET1K_V1"', "models[0].weights",
     'efficientnet_lite0 takes "DEFAULT", "none" or a weights file path'),
    ('factory = "pkg.mod:fn"\nweights = "DEFAULT"', "models[0].weights", 'not "DEFAULT"'),
    ('factory = "pkg.mod.fn"', "models[0].factory", "expected 'package.module:function', got 'pkg.mod.fn'"),
    ('factory = "pkg/mod:fn"', "models[0].factory", "expected 'package.module:function'"),
    ('name = "resnet18"\nlabels = "labels.txt"', "models[0].labels", "labels file 'labels.txt': no such file"),
    ('name = "resnet18"\nsize = 0', "models[0].size", "must be from 8 to 4096, got 0"),
    ('name = "resnet18"\nmean = [0.5, 0.5]', "models[0].mean", "expected an array of 3 numbers"),
    ('name = "resnet18"\nstd = [0.5, 0, 0.5]', "models[0].std", "every value must be greater than 0"),
    ('name = "resnet18"\nlayers = { gradcma = "layer4" }', "models[0].layers.gradcma",
     "unknown technique (did you mean: gradcam"),
    ('name = "resnet18"\nlayers = { vanilla = "layer4" }', "models[0].layers.vanilla", "takes no layer"),
    ('name = "resnet18"\nlayers = { gradcam = ["layer3", "layer4"] }', "models[0].layers.gradcam",
     "takes one layer, got 2"),
    ('name = "resnet18"\nlayers = { gradcam = 4 }', "models[0].layers.gradcam", "expected a module name"),
])
def test_bad_model_fields(folder: Path, model: str, field: str, problem: str) -> None:
    msg = only(errors(folder, "", models=f"[[models]]\n{model}\n"))
    assert msg.startswith(f"gallery.toml: {field}: ") and problem in msg


def test_duplicate_ids(folder: Path) -> None:
    errs = errors(folder, '[[techniques]]\nname = "gradcam"\n[[techniques]]\nname = "gradcam"\n',
                  models=MODEL + MODEL)
    assert errs[0].startswith("gallery.toml: models[1]: duplicate model id 'resnet18'")
    assert errs[1].startswith("gallery.toml: techniques[1]: duplicate technique id 'gradcam'")


def test_unknown_technique_suggests(folder: Path) -> None:
    msg = only(errors(folder, '[[techniques]]\nname = "gradcma"\n'))
    assert msg.startswith("gallery.toml: techniques[0].name: unknown technique 'gradcma' (did you mean: gradcam")


@pytest.mark.parametrize("params, field, problem", [
    ("{ step = 3 }", "params.step", "unknown parameter 'step' (did you mean: steps?)"),
    ("{ steps = 'many' }", "params.steps", "parameter 'steps' must be int, got str 'many'"),
    ("{ steps = 2.0 }", "params.steps", "must be int, got float"),
    ("{ baseline = 'white' }", "params.baseline", "must be one of 'zero', 'black', 'blur', got 'white'"),
])
def test_bad_technique_params(folder: Path, params: str, field: str, problem: str) -> None:
    msg = only(errors(folder, f'[[techniques]]\nname = "integrated_gradients"\nparams = {params}\n'))
    assert msg.startswith(f"gallery.toml: techniques[0].{field}: ") and problem in msg


def test_every_problem_is_reported_at_once(folder: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load(folder, '[gallery]\ndevice = "gpu"\n[[techniques]]\nname = "gradcma"\n'
                     '[[techniques]]\nname = "smoothgrad"\nparams = { samples = "x", sigmaa = 1 }\n',
             images='[[images]]\npath = "nothing/*.png"\ntarget = -2\n',
             models='[[models]]\nname = "resnet5"\n')
    errs = info.value.errors
    fields = [e.split(": ")[1] for e in errs]
    assert fields == ["gallery.device", "images[0].target", "images[0].path", "models[0].name",
                      "techniques[0].name", "techniques[1].params.samples", "techniques[1].params.sigmaa"]
    assert str(info.value) == "\n".join(errs)


def test_output_must_be_a_folder_below_the_manifest(folder: Path) -> None:
    (folder / "taken").write_text("")
    assert "is the manifest's folder" in only(errors(folder, '[gallery]\noutput = "."\n'))
    assert "is the manifest's folder" in only(errors(folder, '[gallery]\noutput = ".."\n'))
    assert "gallery.output: 'taken' is a file, not a folder" in only(errors(folder, '[gallery]\noutput = "taken"\n'))


# --- checks against loaded models ---------------------------------------------------------


def adapter(labels: list[str], modules: set[str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(labels=labels, num_classes=len(labels) or 10,
                           module_names=modules or {"features", "features.0", "layer4", "fc"})


def test_check_against_models(folder: Path) -> None:
    m = load(folder, "", images=(
        '[[images]]\npath = "photos/*"\ntarget = 3\n'
        '[[images]]\npath = "photos/a.png"\ntarget = "Tabby Cat"\n'
        '[[images]]\npath = "photos/a.png"\ntarget = "tabby"\n'
        '[[images]]\npath = "photos/a.png"\ntarget = 12\n'), models=(
        '[[models]]\nname = "resnet18"\nlayers = { gradcam = "layer5", layercam = ["layer4", "fc"] }\n'
        '[[models]]\nname = "vgg11"\n[[models]]\nname = "alexnet"\n'))
    errs = check_against_models(m, {
        "resnet18": adapter(["tabby cat", "tiger cat", "goldfish"]),
        "vgg11": adapter([]),
    })
    assert errs == [
        "gallery.toml: models[0].layers.gradcam: model 'resnet18' has no layer 'layer5' "
        "(did you mean: layer4?) (`galleryvis layers resnet18` lists them)",
        "gallery.toml: images[0].target: class index 3 is out of range for model 'resnet18' (3 classes: 0..2)",
        "gallery.toml: images[2].target: model 'resnet18' has no class 'tabby' (did you mean: tabby cat?)",
        "gallery.toml: images[3].target: class index 12 is out of range for model 'resnet18' (3 classes: 0..2)",
        "gallery.toml: images[1].target: model 'vgg11' has no class names, so target 'Tabby Cat' cannot be "
        "looked up (give the model a `labels` file, or use a class index)",
        "gallery.toml: images[2].target: model 'vgg11' has no class names, so target 'tabby' cannot be "
        "looked up (give the model a `labels` file, or use a class index)",
        "gallery.toml: images[3].target: class index 12 is out of range for model 'vgg11' (10 classes: 0..9)",
    ]


def test_check_against_models_accepts_a_good_manifest(folder: Path) -> None:
    m = load(folder, "", images='[[images]]\npath = "photos/a.png"\ntarget = "GOLDFISH"\n',
             models='[[models]]\nname = "resnet18"\nlayers = { gradcam = "layer4" }\n')
    assert check_against_models(m, {"resnet18": adapter(["tabby", "goldfish"])}) == []


def test_a_technique_row_may_name_its_own_target_checked_like_an_images(folder: Path) -> None:
    m = load(folder, '[[techniques]]\nname = "gradcam"\ntarget = "goldfish"\n'
                     '[[techniques]]\nname = "class_visualization"\ntarget = 1\n'
                     '[[techniques]]\nname = "vanilla"\ntarget = "top1"\n')
    assert [t.target for t in m.techniques] == ["goldfish", 1, None]
    assert check_against_models(m, {"resnet18": adapter(["tabby", "goldfish"])}) == []
    assert check_against_models(m, {"resnet18": adapter(["tabby", "tiger"])}) == [
        "gallery.toml: techniques[0].target: model 'resnet18' has no class 'goldfish'"]
    assert only(errors(folder, '[[techniques]]\nname = "gradcam"\ntarget = -1\n')) == \
        "gallery.toml: techniques[0].target: class index must be 0 or more, got -1"
    assert only(errors(folder, '[[techniques]]\nname = "filter_visualization"\ntarget = 3\n')) == \
        "gallery.toml: techniques[0].target: technique 'filter_visualization' optimizes a channel, not a class"


# --- the embedded default and the starter manifest ----------------------------------------


def test_default_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    m = default_manifest()
    assert m.path is None and m.label == "default manifest"
    assert m.gallery.output == tmp_path / "site"
    assert m.gallery.title == "galleryvis — CNN visualizations" and m.gallery.description
    assert m.metrics.enabled
    assert [s.name for s in m.models] == ["efficientnet_lite0", "efficientnet_lite1"]  # a real comparison
    assert m.gallery.scale == "per-image"  # the compare pages show the models on one scale
    names = {i.path.name for i in m.images}
    assert 2 <= len(names) <= 5 and "cat.png" in names
    assert all(i.path.is_file() and i.path.parent == m.root for i in m.images)
    # the seed's rows, and every technique that shares their passes
    assert SEED_ROWS <= {t.name for t in m.techniques}
    assert len({t.id for t in m.techniques}) == len(m.techniques)
    # what the model saw, not only where: a concept row (its atlases linked from the landing page)
    assert [(t.name, t.layer) for t in m.techniques if t.name == "crp"] == [("crp", "_blocks.10")]
    # the seed's regularization comparison: flamingo (130) from pixels with none / L1 / L2, beside the default
    flamingo = [(t.params["param"], t.params["regularization"]) for t in m.techniques if t.target == 130]
    assert flamingo == [("pixel", "none"), ("pixel", "l1"), ("pixel", "l2"), ("fft", "none")]


#: The techniques of the pytorch-cnn-visualizations README: the floor of every shipped gallery.
SEED_ROWS = {"vanilla", "guided_backprop", "gradcam", "scorecam", "guided_gradcam", "layercam", "grad_x_image",
             "smoothgrad", "integrated_gradients", "lrp", "filter_visualization", "layer_activation",
             "inverted_representation", "deep_dream", "class_visualization"}


def test_complete_example_holds_the_default_and_the_seed_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = default_manifest()
    path = Path(__file__).resolve().parent.parent / "examples" / "complete" / "galleryvis.toml"
    m = load_manifest(path)
    assert m.gallery.output.resolve() == path.parent.parent.parent / "site"  # the committed site/
    assert {i.path.name for i in default.images} < {i.path.name for i in m.images}
    assert [s.name for s in m.models] == [s.name for s in default.models]
    assert {t.id for t in default.techniques} <= {t.id for t in m.techniques}
    # a technique added to galleryvis needs no row here (its module, page and test suffice)
    assert SEED_ROWS <= {t.name for t in m.techniques}
    assert not any(registry.get(t.name).attention for t in m.techniques)  # a CNN has no self-attention
    assert len({t.id for t in m.techniques}) == len(m.techniques)


@pytest.mark.parametrize("github_pages", [False, True])
def test_starter_manifest_round_trips(tmp_path: Path, github_pages: bool) -> None:
    (tmp_path / "input_images").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "input_images" / "grey.png")
    (tmp_path / "input_images" / "ATTRIBUTION.md").write_text("sources")
    text = starter_manifest(github_pages)
    m = load_manifest(write(tmp_path, text, "galleryvis.toml"))
    assert m.gallery.output == tmp_path / "site"
    assert ("galleryvis-pages.yml" in text) == github_pages
    assert [i.path.name for i in m.images] == ["grey.png"]
    assert [s.name for s in m.models] == ["efficientnet_lite0"]
    assert len(m.techniques) == len([n for n in registry.names("attribution")
                                     if not registry.get(n).attention and "classification" in registry.get(n).tasks])


def test_starter_manifest_examples_are_valid(tmp_path: Path) -> None:
    (tmp_path / "input_images").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "input_images" / "x.jpg")
    (tmp_path / "w.pth").write_bytes(b"")
    (tmp_path / "labels.txt").write_text("a\n")
    text = starter_manifest().replace("# target =", "target =", 1).replace("# weights =", "weights =", 1)
    text = text.replace("# id =", "id =", 1).replace("# layers", "layers").replace("# colormap", "colormap")
    m = load_manifest(write(tmp_path, text, "galleryvis.toml"))
    assert m.models[0].layers == {"gradcam": "_blocks.15"} and m.models[0].id == "lite0"
    techniques = "\n".join(ln[2:] for ln in text.split("# [[techniques]]", 1)[1].split("[metrics]")[0].splitlines()
                           if ln.startswith("# ") and not ln.startswith("# Techniques"))
    factory = text.split("# Your own nn.Module (this runs your code):\n", 1)[1].split("\n\n")[0]
    factory = "\n".join(ln[2:] for ln in factory.splitlines()).replace("checkpoints/model.pth", "w.pth")
    body = text.split("[metrics]")[0] + factory + "\n[[techniques]]\n" + techniques + "\n"
    m = load_manifest(write(tmp_path, body, "full.toml"))
    assert [t.id for t in m.techniques] == ["gradcam", "smoothgrad", "smoothgrad_wide", "layercam"]
    assert (m.techniques[3].layer, m.techniques[3].scale, m.techniques[3].target) == (
        ("_blocks.10", "_blocks.15"), "per-row", "tabby")
    assert m.models[1].factory == "mypackage.models:build" and m.models[1].size == 224


# --- property tests: parse_manifest accepts or raises ManifestError, nothing else --------

_scalars = st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.booleans())
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_plausible = st.sampled_from([
    "resnet18", "efficientnet_lite0", "DEFAULT", "none", "IMAGENET1K_V1", "w.pth", "pkg.mod:fn", "gradcam",
    "layercam", "vanilla", "smoothgrad", "top1", "tabby", "cpu", "cuda", "*.png", "*", ".", "..", "/", "~",
    "\x00", "a/b.png", "img.png", "layer4", "blur", "",
])
_field_values = st.one_of(_values, _plausible, st.integers(-2, 2000), st.lists(_plausible, max_size=3),
                          st.dictionaries(st.sampled_from(["gradcam", "layercam", "vanilla", "steps", "x"]),
                                          st.one_of(_plausible, _values), max_size=3))


def _section(keys: list[str]) -> st.SearchStrategy:
    return st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=6)), _field_values, max_size=5)


_gallery = _section([k for k in schema.keys("gallery") if k != "plugins"])  # a plugin would run code
_image = _section(list(schema.keys("images")))
_model = _section(list(schema.keys("models")))
_technique = st.one_of(_section(list(schema.keys("techniques"))), st.fixed_dictionaries(
    {"name": st.sampled_from(registry.names())},
    optional={"params": st.dictionaries(st.sampled_from(["steps", "samples", "sigma", "base", "seed", "x"]),
                                        _field_values, max_size=3), "id": _plausible}))
_metrics = _section(list(schema.keys("metrics")))
_near_valid = st.fixed_dictionaries({
    "images": st.lists(st.fixed_dictionaries({"path": st.sampled_from(["img.png", "*.png"])}, optional={
        "target": st.one_of(st.integers(-1, 5), _plausible)}), min_size=1, max_size=2),
    "models": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["resnet18", "efficientnet_lite0"])}, optional={
        "weights": st.sampled_from(["DEFAULT", "none", "IMAGENET1K_V1", "x.pth"]),
        "layers": st.dictionaries(st.sampled_from(["gradcam", "layercam", "vanilla"]),
                                  st.one_of(_plausible, st.lists(_plausible, max_size=2)), max_size=2),
        "size": st.integers(0, 5000), "mean": st.lists(st.floats(), max_size=4), "id": _plausible,
    }), min_size=1, max_size=2),
}, optional={"techniques": st.lists(_technique, max_size=3), "gallery": _gallery, "metrics": _metrics})
_manifests = st.one_of(
    _near_valid,
    st.dictionaries(st.text(max_size=8), _values, max_size=4),
    st.fixed_dictionaries({}, optional={
        "gallery": st.one_of(_gallery, _values),
        "images": st.one_of(st.lists(_image, max_size=3), _values),
        "models": st.one_of(st.lists(_model, max_size=3), _values),
        "techniques": st.one_of(st.lists(_technique, max_size=3), _values),
        "metrics": st.one_of(_metrics, _values),
        "extra": _values,
    }),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_manifests)
def test_parse_never_crashes(data: dict, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.getbasetemp() / "hypothesis-root"
    if not root.exists():
        root.mkdir()
        Image.new("RGB", (4, 4)).save(root / "img.png")
    try:
        manifest = parse_manifest(data, path=Path("fuzz.toml"), root=root)
    except ManifestError as exc:
        assert exc.errors and all(e.startswith("fuzz.toml: ") for e in exc.errors)
    else:
        assert isinstance(manifest, Manifest)


_toml_lines = st.lists(st.one_of(
    st.sampled_from(["[gallery]", "[[images]]", "[[models]]", "[[techniques]]", "[metrics]", "[x.y]"]),
    st.builds(lambda k, v: f"{k} = {v}",
              st.sampled_from(["title", "path", "name", "target", "params", "device", "steps", "alpha", "x"]),
              st.one_of(st.sampled_from(['"resnet18"', '"*.png"', "3", "-1", "1.5", "true", "[1, 2]",
                                         '{ steps = 2 }', '"gradcam"', "1979-05-27", "inf", '"top1"']),
                        st.text(string.printable, max_size=8))),
    st.text(max_size=10),
), max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=_toml_lines)
def test_load_never_crashes_on_random_toml(lines: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.getbasetemp() / "hypothesis-toml"
    folder.mkdir(exist_ok=True)
    path = write(folder, "\n".join(lines), "fuzz.toml")
    try:
        load_manifest(path)
    except ManifestError as exc:
        assert exc.errors and all(e.startswith("fuzz.toml: ") for e in exc.errors)


def test_manifest_error_joins_messages() -> None:
    err = ManifestError(["a.toml: x: bad", "a.toml: y: worse"])
    assert str(err) == "a.toml: x: bad\na.toml: y: worse" and err.errors == ["a.toml: x: bad", "a.toml: y: worse"]


def test_specs_default_their_ids() -> None:
    assert ModelSpec("vgg16").id == "vgg16" and ModelSpec("vgg16", id="v").id == "v"
    assert TechniqueSpec("gradcam").id == "gradcam"
    assert ImageSpec(Path("a.png")).target is None
    assert tomllib.loads(starter_manifest())["models"][0]["name"] == "efficientnet_lite0"


# --- the schema is declared once ----------------------------------------------------------
DOCS = Path(__file__).resolve().parent.parent / "docs" / "manifest.md"


def test_the_docs_tables_are_generated_from_the_schema() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert schema.documented_sections(text) == list(schema.SECTIONS)
    # a key added to the schema only, or to the docs only, fails here
    assert schema.rewrite_tables(text) == text, "run: python -m galleryvis.config.schema docs/manifest.md"
    assert "| `alpha` | number 0 to 1 | `0.5` | opacity of the heatmap in overlay views |" in text


def test_the_parsed_specs_defaults_and_keys_are_the_schema() -> None:
    import dataclasses

    specs = {"gallery": GallerySpec, "images": ImageSpec, "models": ModelSpec, "techniques": TechniqueSpec,
             "metrics": MetricsSpec, "concepts": ConceptsSpec}
    assert set(specs) == set(schema.SECTIONS)
    for section, spec in specs.items():
        # where an entry was written and which parameters it wrote are not keys of their own
        fields = {f.name: f for f in dataclasses.fields(spec) if f.name not in ("field", "given")}
        declared = {f.key: f for f in schema.SECTIONS[section]}
        assert set(fields) == set(declared), section
        for key, f in declared.items():
            default = fields[key].default
            if default is dataclasses.MISSING and fields[key].default_factory is not dataclasses.MISSING:
                default = fields[key].default_factory()
            assert default == (dataclasses.MISSING if f.value is schema.NO_VALUE else f.value), f"{section}.{key}"


def test_a_spec_without_a_declared_key_is_refused_at_import() -> None:
    from galleryvis.config import manifest

    with pytest.raises(TypeError, match=r"lacks the declared keys \['enabled'\]"):
        @manifest._declared("metrics")
        class Metrics:  # one key short of the schema's [metrics]
            deletion_insertion: bool
            sanity: bool
            steps: int
            substrate: str
            road: bool
            road_percentile: float
            sanity_steps: int
            sanity_techniques: tuple[str, ...] | None
            compute: tuple[str, ...]


def test_every_reader_and_choice_the_schema_names_exists() -> None:
    import typing

    from galleryvis.config import manifest
    from galleryvis import sources
    from galleryvis.metrics import gallery as metrics
    from galleryvis.config.manifest import _Parser

    for fields in schema.SECTIONS.values():
        for f in fields:
            assert callable(getattr(_Parser, f"read_{f.read}", None)), f.key
    assert schema.field("metrics", "substrate").choices == metrics.SUBSTRATES == typing.get_args(manifest.Substrate)
    assert (manifest.DEVICES, manifest.EXECUTORS, manifest.SCALES) == (
        typing.get_args(manifest.Device), typing.get_args(manifest.Executor), typing.get_args(manifest.Scale))
    assert schema.field("techniques", "scale").choices == manifest.SCALES
    assert schema.field("models", "source").type == ", ".join(f'`"{s}"`' for s in sources.SOURCE_NAMES)


def _starter_keys() -> dict[str, set[str]]:
    """The starter's keys per section, written or commented out."""
    section, seen = None, {}
    for line in starter_manifest().splitlines():
        text = line.lstrip("# ").rstrip()
        head = re.fullmatch(r"\[+(\w+)\]+", text)
        if head:
            section = head.group(1)
            continue
        key = re.match(r"(\w+) = ", text)
        if key and section is not None:
            seen.setdefault(section, set()).add(key.group(1))
    return seen


def test_the_starter_shows_every_declared_key_and_no_other() -> None:

    assert _starter_keys() == {name: set(schema.keys(name)) for name in schema.SECTIONS}


def test_every_declared_range_is_the_one_the_parser_enforces(folder: Path) -> None:
    where = {"gallery": lambda k, v: (f"[gallery]\n{k} = {v}\n", {}),
             "models": lambda k, v: ("", {"models": f'{MODEL}{k} = {v}\n'}),
             "metrics": lambda k, v: (f"[metrics]\n{k} = {v}\n", {}),
             "images": lambda k, v: ("", {"images": f'[[images]]\npath = "photos/*"\n{k} = {v}\n'})}
    ranged = [(s, f) for s, fields in schema.SECTIONS.items() for f in fields if f.range is not None]
    assert {(s, f.key) for s, f in ranged} == {("gallery", "alpha"), ("gallery", "outlier_perc"), ("models", "size"),
                                               ("gallery", "num_gpus"), ("gallery", "ray_workers"),
                                               ("gallery", "num_cpus"),
                                               ("models", "seed"), ("models", "score_threshold"),
                                               ("models", "max_detections"), ("metrics", "steps"), ("metrics", "sanity_steps"),
                                               ("metrics", "road_percentile"), ("images", "top")}
    for section, f in ranged:
        low, high = f.range
        step = 1 if f.type.startswith("integer") else 0.01
        shown = f"{int(low)} to {int(high)}" if step == 1 else f"{low:g} to {high:g}"
        assert shown in f.type  # the docs say the same range
        for value in (low, high):
            body, parts = where[section](f.key, int(value) if step == 1 else value)
            load(folder, body, **parts)
        for value in (low - step, high + step):
            body, parts = where[section](f.key, int(value) if step == 1 else value)
            assert any(f".{f.key}:" in e for e in errors(folder, body, **parts)), (section, f.key, value)


def _wrong_value(type_text: str) -> str:
    """A TOML value of the wrong type for a field of ``type_text`` (docs/manifest.md's words)."""
    if type_text.startswith("integer, string"):  # a class index or name: neither is a boolean
        return "true"
    if type_text.startswith(("integer", "number", "boolean")):
        return '"x"'
    if type_text.startswith("`"):  # one of a few strings
        return '"not-a-choice"'
    return "[[1]]" if type_text.startswith("array") else "1"


def test_every_declared_type_is_checked_by_the_parser(folder: Path) -> None:
    def manifest(section: str, key: str, value: str) -> tuple[str, dict[str, str]]:
        line = f"{key} = {value}\n"
        if section in ("gallery", "metrics"):
            return f"[{section}]\n{line}", {}
        if section == "images":
            return "", {"images": "[[images]]\n" + (line if key == "path" else 'path = "photos/*"\n' + line)}
        if section == "models":
            return "", {"models": "[[models]]\n" + (line if key == "name" else 'name = "resnet18"\n' + line)}
        return "[[techniques]]\n" + (line if key == "name" else 'name = "gradcam"\n' + line), {}

    for section, fields in schema.SECTIONS.items():
        for f in fields:
            body, parts = manifest(section, f.key, _wrong_value(f.type))
            errs = errors(folder, body, **parts)
            assert any(f".{f.key}" in e or f"{section}[0]" in e for e in errs), (section, f.key, errs)


def test_reading_a_manifest_imports_no_torch_and_loads_no_plugin(folder: Path) -> None:
    # the schema's step reads every key; model sources, plug-ins and the registry come after it
    import json
    import subprocess
    import sys

    path = write(folder, '[[techniques]]\nname = "gradcam"\n[gallery]\nplugins = ["never.py"]\ncolormap = "viridis"\n'
                         '[[images]]\npath = "photos/*"\n' + MODEL)
    code = f"""
import json, sys, tomllib
from pathlib import Path
from galleryvis.config import manifest
parser = manifest._Parser("gallery.toml", Path({str(folder)!r}))
draft = parser.read(tomllib.loads(Path({str(path)!r}).read_text()))
read = dict(errors=list(parser.errors), models=len(draft.models), techniques=len(draft.techniques),
            modules=sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m in ("galleryvis.config.plugins",
                                                                                        "galleryvis.metrics")))
parser.resolve(draft)
print(json.dumps(dict(read, resolved=parser.errors)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=folder)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["modules"] == [] and result["errors"] == []
    assert (result["models"], result["techniques"]) == (1, 1)
    assert result["resolved"] == ["gallery.toml: gallery.plugins: plug-in file 'never.py' does not exist "
                                  f"(looked for {str(folder / 'never.py')!r})"]
